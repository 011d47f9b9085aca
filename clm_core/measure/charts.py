"""Small inline SVG charts for the report: no script, no external file, every label escaped.

Each function returns one ``<svg>`` element as text; sizes are in CSS pixels and the charts
scale with the page (``viewBox``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f", "#bab0ac")
STAGE_COLORS = {"prospect": "#bab0ac", "new": "#76b7b2", "active": "#4e79a7", "loyal": "#59a14f",
                "at_risk": "#edc948", "churned": "#e15759", "reactivated": "#b07aa1"}


def color(name: str, i: int) -> str:
    return STAGE_COLORS.get(name, PALETTE[i % len(PALETTE)])


def _svg(width: int, height: int, body: list[str], label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
            f'width="100%" style="max-width:{width}px" role="img" aria-label="{escape(label)}">'
            + "".join(body) + "</svg>")


def _text(
    x: float, y: float, s: str, anchor: str = "start", size: int = 12, extra: str = ""
) -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}"{extra}>'
            f"{escape(s)}</text>")


def bars(
    items: Sequence[tuple[str, float]],
    label: str,
    fmt: Callable[[float], str] = "{:,.0f}".format,
    colors: Sequence[str] | None = None,
    width: int = 560,
) -> str:
    """Horizontal bars, one per item, with the value at the end of each bar."""
    if not items:
        return ""
    row, left = 24, 150
    height = row * len(items) + 10
    top = max((v for _, v in items if math.isfinite(v)), default=0) or 1
    body = []
    for i, (name, v) in enumerate(items):
        y = 5 + i * row
        w = 0 if not math.isfinite(v) else max(0.0, v) / top * (width - left - 90)
        fill = colors[i] if colors else color(name, i)
        body.append(_text(left - 6, y + 15, name[:24], "end"))
        body.append(
            f'<rect x="{left}" y="{y + 3}" width="{w:.1f}" height="{row - 8}" fill="{fill}"/>'
        )
        body.append(_text(left + w + 4, y + 15, fmt(v) if math.isfinite(v) else "n/a"))
    return _svg(width, height, body, label)


def lines(series: Sequence[tuple[str, Sequence[float | None]]], xlabels: Sequence[str], label: str,
          yfmt: Callable[[float], str] = "{:,.0f}".format, width: int = 640, height: int = 260,
          ymax: float | None = None, dashed: Sequence[str] = ()) -> str:
    """Lines over shared x positions (None leaves a gap), with a legend on the right."""
    if not series or not xlabels:
        return ""
    left, right, top, bottom = 56, 150, 10, 30
    pw, ph = width - left - right, height - top - bottom
    values = [v for _, ys in series for v in ys if v is not None and math.isfinite(v)]
    hi = float(ymax if ymax is not None else max(values, default=1.0)) or 1.0
    n = len(xlabels)

    def x(i: int) -> float:
        return left + (pw * i / (n - 1) if n > 1 else pw / 2)

    def y(v: float) -> float:
        return top + ph - ph * v / hi

    body = [f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#ddd"/>']
    for k in range(5):
        v = hi * k / 4
        body.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>'
        )
        body.append(_text(left - 4, y(v) + 4, yfmt(v), "end", 10))
    step = max(1, math.ceil(n / 8))
    for i in range(0, n, step):
        body.append(_text(x(i), height - 10, xlabels[i], "middle", 10))
    for s, (name, ys) in enumerate(series):
        c = color(name, s)
        dash = ' stroke-dasharray="5,4"' if name in dashed else ""
        path, pen = [], "M"
        for i, val in enumerate(ys):
            if val is None or not math.isfinite(val):
                pen = "M"
                continue
            path.append(f"{pen}{x(i):.1f},{y(val):.1f}")
            pen = "L"
        if path:
            body.append(
                f'<path d="{" ".join(path)}" fill="none" stroke="{c}" stroke-width="2"{dash}/>'
            )
            if len(path) == 1:
                px, py = path[0][1:].split(",")
                body.append(f'<circle cx="{px}" cy="{py}" r="3" fill="{c}"/>')
        ly = top + 12 + s * 16
        body.append(
            f'<rect x="{width - right + 10}" y="{ly - 9}" width="10" height="10" fill="{c}"/>'
        )
        body.append(_text(width - right + 24, ly, name[:20], size=11))
    return _svg(width, height, body, label)


def heatmap(rows: Sequence[str], cols: Sequence[str], cell: Callable[[int, int], float | None],
            label: str, fmt: Callable[[float], str] = "{:,.0f}".format, width: int = 640,
            row_title: str = "", col_title: str = "") -> str:
    """A grid of shaded cells with their values (darker is more)."""
    if not rows or not cols:
        return ""
    # Room for the longest row name (about 7 px a character at 11 px): a journey name such as
    # programme_welcome was cut at 16 characters and clipped at the left edge.
    names = [r[:32] for r in rows]
    left, top = min(240, max(110, 7 * max(len(n) for n in names) + 12)), 44
    cw = min(80, (width - left - 10) / len(cols))
    ch = 26
    height = int(top + ch * len(rows) + 10)
    vals = [cell(i, j) for i in range(len(rows)) for j in range(len(cols))]
    hi = max((v for v in vals if v is not None and math.isfinite(v)), default=0) or 1
    body = [_text(left + cw * len(cols) / 2, 12, col_title, "middle", 11, ' font-weight="bold"'),
            _text(4, 12, row_title, size=11, extra=' font-weight="bold"')]
    for j, c in enumerate(cols):
        body.append(_text(left + cw * j + cw / 2, top - 8, c[:12], "middle", 10))
    for i, r in enumerate(rows):
        body.append(_text(left - 6, top + ch * i + 17, names[i], "end", 11))
        for j in range(len(cols)):
            v = cell(i, j)
            share = 0.0 if v is None or not math.isfinite(v) else max(0.0, v) / hi
            fill = f"rgba(78,121,167,{0.08 + 0.85 * share:.2f})"
            ink = "#fff" if share > 0.55 else "#222"
            x0, y0 = left + cw * j, top + ch * i
            body.append(
                f'<rect x="{x0:.1f}" y="{y0}" width="{cw - 2:.1f}" height="{ch - 2}" fill="{fill}"/>'  # noqa: E501  (prose or a URL: clearer whole)
            )
            if v is not None and math.isfinite(v) and v:
                body.append(_text(x0 + cw / 2, y0 + 17, fmt(v), "middle", 10, f' fill="{ink}"'))
    return _svg(width, height, body, label)


def histogram(
    bins: Sequence[tuple[float, float, int]],
    label: str,
    width: int = 640,
    height: int = 220,
    xfmt: Callable[[float], str] = "{:,.0f}".format,
) -> str:
    """Columns over value bands (low, high, count)."""
    if not bins:
        return ""
    left, bottom, top = 56, 30, 10
    pw, ph = width - left - 10, height - top - bottom
    hi = max(n for _, _, n in bins) or 1
    bw = pw / len(bins)
    body = []
    for k in range(5):
        v = hi * k / 4
        yy = top + ph - ph * v / hi
        body.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#eee"/>'
        )
        body.append(_text(left - 4, yy + 4, f"{v:,.0f}", "end", 10))
    for i, (lo, _, n) in enumerate(bins):
        h = ph * n / hi
        body.append(
            f'<rect x="{left + i * bw + 1:.1f}" y="{top + ph - h:.1f}" width="{bw - 2:.1f}" '
            f'height="{h:.1f}" fill="#4e79a7"><title>{escape(xfmt(lo))}: {n:,}</title></rect>'
        )
        if i % max(1, len(bins) // 5) == 0:
            body.append(_text(left + i * bw, height - 10, xfmt(lo), "middle", 10))
    body.append(_text(left + pw, height - 10, xfmt(bins[-1][1]) + "+", "end", 10))
    return _svg(width, height, body, label)
