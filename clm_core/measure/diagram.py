"""A journey diagram as inline SVG: the boxes and arrows of ``graph.structure`` in layers, top
to bottom, for pages that may load no script (the report, ``clm preview --html``).

Mermaid would need its JavaScript, which a self-contained file cannot fetch, so the layout is
done here and kept simple, in the manner of a layered (Sugiyama) drawing:

1. layers: a box sits one layer below the deepest box that leads to it (longest path from the
   start). The loader refuses journeys whose steps form a cycle, but the walk still sets aside
   any arrow back up rather than loop, so a diagram of a hand-made structure always ends;
2. order: within a layer, boxes keep the order the journey names them in, then each layer is
   sorted once by the mean position of the boxes that lead to it, which untangles splits and
   branches that rejoin;
3. drawing: forward arrows are curves from the bottom of one box to the top of the next, and
   run beside the boxes of any layer they skip; an arrow back up would run in the right-hand
   margin; the conversion window is a dashed arrow from the start to the goal box beside it.
   Arrowheads are small triangles rather than SVG markers, whose ``url(#id)`` references
   collide when a page holds several diagrams.

Every text is escaped; a line too long for its box is broken between words onto a second
line, and what still does not fit is cut with an ellipsis and stays whole in the box's tooltip
(``<title>``). Counts (entered, reached, converted) are drawn in bold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

from clm_core.measure.charts import _svg, _text
from clm_core.measure.graph import Diagram, Edge, Node

FONT = 12
LINE = 16  # px per text line
CHAR = 6.8  # mean width of a character at FONT px (Latin; wide scripts are cut sooner)
MIN_W, MAX_W = 120, 300
GAP_X, GAP_Y = 36, 58  # between boxes in a layer, between layers (room for arrow labels)
GAP_GOAL = 90  # between the start and the goal box (room for the window's label)
PAD = 16  # around the drawing
STYLE = {  # kind -> fill, stroke, corner radius
    "start": ("#e8eef7", "#1f3a5f", 14), "send": ("#ffffff", "#1f3a5f", 4),
    "wait": ("#f6f8fa", "#8a94a6", 4), "branch": ("#fff7e0", "#b08900", 4),
    "split": ("#f3e8ff", "#7b3fb5", 4), "exit": ("#eef7ee", "#1b7f3b", 14),
    "goal": ("#e9f7ef", "#1b7f3b", 4), "end": ("#eef7ee", "#1b7f3b", 14),
}


@dataclass
class _Box:
    node: Node
    layer: int
    x: float = 0.0  # left
    y: float = 0.0  # top
    w: float = 0.0
    h: float = 0.0
    texts: list[tuple[str, bool]] = field(default_factory=list)  # (line as drawn, a count)

    @property
    def cx(self) -> float:
        return self.x + self.w / 2


def _width(text: str) -> float:
    return sum(CHAR * (1.8 if ord(ch) > 0x2E80 else 1.0) for ch in text)


def _fit(text: str, room: float) -> str:
    """``text`` cut to ``room`` px with an ellipsis."""
    if _width(text) <= room:
        return text
    out = ""
    for ch in text:
        if _width(out + ch + "…") > room:
            break
        out += ch
    return out + "…"


def _wrap(text: str, room: float, most: int = 2) -> list[str]:
    """``text`` in at most ``most`` lines of ``room`` px, broken between words (a template
    name or a condition reads better whole on a second line than cut); the last line is cut
    with an ellipsis if the text still does not fit."""
    lines: list[str] = []
    words = text.split(" ")
    while words and len(lines) < most:
        line = words.pop(0)
        while words and _width(line + " " + words[0]) <= room:
            line += " " + words.pop(0)
        lines.append(line)
    if words:
        lines[-1] = lines[-1] + " " + " ".join(words)
    return [_fit(x, room) for x in lines]


def _layers(d: Diagram) -> dict[str, int]:
    """Longest-path layer of every box, arrows back up (found by a depth-first walk from the
    start) left out. Boxes no arrow reaches go below the rest, in the journey's order."""
    out_edges: dict[str, list[str]] = {n.id: [] for n in d.nodes}
    for e in d.edges:
        if not e.dashed and e.src in out_edges and e.dst in out_edges:
            out_edges[e.src].append(e.dst)
    state: dict[str, int] = {}  # 1 on the walk's path, 2 done
    order: list[str] = []  # finishing order (reversed: a topological order)
    forward: dict[str, list[str]] = {n: [] for n in out_edges}

    def walk(n: str) -> None:
        state[n] = 1
        for m in out_edges[n]:
            if state.get(m) == 1:
                continue  # an arrow back up
            forward[n].append(m)
            if m not in state:
                walk(m)
        state[n] = 2
        order.append(n)

    walk("start")
    layer = {n: 0 for n in state}
    for n in reversed(order):
        for m in forward[n]:
            layer[m] = max(layer[m], layer[n] + 1)
    below = max(layer.values(), default=0) + 1
    for node in d.nodes:
        if node.id not in layer and node.kind != "goal":
            layer[node.id] = below
            below += 1
    layer["goal"] = 0  # beside the start: the window runs from entry
    return layer


def layout(d: Diagram) -> tuple[list[_Box], float, float]:
    """Boxes with positions, and the drawing's width and height."""
    layer = _layers(d)
    boxes = {n.id: _Box(n, layer[n.id]) for n in d.nodes}
    for b in boxes.values():
        longest = max((_width(x) for x in (*b.node.lines, *b.node.counts)), default=0)
        b.w = min(MAX_W, max(MIN_W, longest + 20))
        b.texts = [(x, False) for line in b.node.lines for x in _wrap(line, b.w - 12)]
        b.texts += [(_fit(x, b.w - 12), True) for x in b.node.counts]
        b.h = 10 + LINE * len(b.texts)
    rows: dict[int, list[_Box]] = {}
    for n in d.nodes:  # the journey's order first
        rows.setdefault(boxes[n.id].layer, []).append(boxes[n.id])
    preds: dict[str, list[str]] = {}
    for e in d.edges:
        if not e.dashed and layer[e.src] < layer[e.dst]:
            preds.setdefault(e.dst, []).append(e.src)
    slot: dict[str, float] = {}
    for k in sorted(rows):
        row = rows[k]
        if k:
            row.sort(key=lambda b: sum(slot[p] for p in preds.get(b.node.id, [])) /
                     len(preds[b.node.id]) if preds.get(b.node.id) else float("inf"))
        gaps = [GAP_GOAL if b.node.kind == "goal" else GAP_X for b in row[1:]]
        x = -(sum(b.w for b in row) + sum(gaps)) / 2
        for b, gap in zip(row, [*gaps, 0.0]):
            b.x = x
            slot[b.node.id] = x + b.w / 2
            x += b.w + gap
    left = min(b.x for b in boxes.values())
    y = float(PAD)
    for k in sorted(rows):
        for b in rows[k]:
            b.x += PAD - left
            b.y = y
        y += max(b.h for b in rows[k]) + GAP_Y
    backs = sum(1 for e in d.edges if not e.dashed and layer[e.src] >= layer[e.dst])
    width = max(b.x + b.w for b in boxes.values()) + PAD + 14 * backs
    return list(boxes.values()), width, y - GAP_Y + PAD


def _arrowhead(x: float, y: float, dx: float, dy: float, color: str) -> str:
    """A filled triangle with its tip at (x, y), pointing along (dx, dy) (a unit axis)."""
    bx, by = x - dx * 7, y - dy * 7
    px, py = -dy * 4, dx * 4
    return (f'<polygon points="{x:.1f},{y:.1f} {bx + px:.1f},{by + py:.1f} '
            f'{bx - px:.1f},{by - py:.1f}" fill="{color}"/>')


def _edge_label(x: float, y: float, text: str) -> str:
    shown = _fit(text, MAX_W)
    w = _width(shown) + 8
    return (f'<g><title>{escape(text)}</title><rect x="{x - w / 2:.1f}" y="{y - 9:.1f}" '
            f'width="{w:.1f}" height="16" fill="#ffffff" opacity="0.9"/>'
            + _text(x, y + 3, shown, "middle", 11, ' fill="#444"') + "</g>")


def _edge(e: Edge, a: _Box, b: _Box, lane: float, skipped: list[_Box]) -> list[str]:
    """One arrow. ``skipped``: the boxes of the layers a downward arrow passes (it goes round
    them); ``lane``: the x of the margin an arrow back up runs in."""
    color = "#1b7f3b" if e.dashed else "#5b6675"
    dash = ' stroke-dasharray="5 4"' if e.dashed else ""
    out: list[str] = []
    if a.layer < b.layer and skipped:  # down past other boxes: beside them
        x1, y1, x2, y2 = a.cx, a.y + a.h, b.cx, b.y
        right = max(s.x + s.w for s in skipped) + 18
        left = min(s.x for s in skipped) - 18
        side = right if abs(right - x1) <= abs(x1 - left) else left
        top, bottom = min(s.y for s in skipped), max(s.y + s.h for s in skipped)
        out.append(f'<path d="M{x1:.1f},{y1:.1f} C{x1:.1f},{top:.1f} {side:.1f},{y1:.1f} '
                   f'{side:.1f},{top:.1f} L{side:.1f},{bottom:.1f} C{side:.1f},{y2:.1f} '
                   f'{x2:.1f},{bottom:.1f} {x2:.1f},{y2 - 6:.1f}" fill="none" '
                   f'stroke="{color}"{dash}/>')
        out.append(_arrowhead(x2, y2, 0, 1, color))
        label_at = (side, (top + bottom) / 2)
    elif a.layer < b.layer:  # down to the next layer
        x1, y1, x2, y2 = a.cx, a.y + a.h, b.cx, b.y
        mid = (y1 + y2) / 2
        out.append(f'<path d="M{x1:.1f},{y1:.1f} C{x1:.1f},{mid:.1f} {x2:.1f},{mid:.1f} '
                   f'{x2:.1f},{y2 - 6:.1f}" fill="none" stroke="{color}"{dash}/>')
        out.append(_arrowhead(x2, y2, 0, 1, color))
        label_at = ((x1 + x2) / 2, mid)
    elif e.dashed or a.layer == b.layer and b.x > a.x:  # sideways (start to goal)
        x1, x2 = a.x + a.w, b.x
        y1 = y2 = a.y + min(a.h, b.h) / 2  # level, whichever box is taller
        out.append(f'<path d="M{x1:.1f},{y1:.1f} L{x2 - 6:.1f},{y2:.1f}" fill="none" '
                   f'stroke="{color}"{dash}/>')
        out.append(_arrowhead(x2, y2, 1, 0, color))
        label_at = ((x1 + x2) / 2, y1 - 10)
    else:  # back up, down the right-hand margin
        x1, y1, x2, y2 = a.x + a.w, a.y + a.h / 2, b.x + b.w, b.y + b.h / 2
        out.append(f'<path d="M{x1:.1f},{y1:.1f} L{lane:.1f},{y1:.1f} L{lane:.1f},{y2:.1f} '
                   f'L{x2 + 6:.1f},{y2:.1f}" fill="none" stroke="{color}"{dash}/>')
        out.append(_arrowhead(x2, y2, -1, 0, color))
        label_at = (lane, (y1 + y2) / 2)
    if e.label:
        out.append(_edge_label(*label_at, e.label))
    return out


def _box(b: _Box) -> str:
    fill, stroke, radius = STYLE.get(b.node.kind, STYLE["send"])
    dash = ' stroke-dasharray="5 3"' if b.node.kind == "goal" else ""
    tip = "\n".join((*b.node.lines, *b.node.counts))
    parts = [f"<g><title>{escape(tip)}</title>",
             f'<rect x="{b.x:.1f}" y="{b.y:.1f}" width="{b.w:.1f}" height="{b.h:.1f}" '
             f'rx="{radius}" fill="{fill}" stroke="{stroke}"{dash}/>']
    y = b.y + 5 + LINE - 3
    for line, count in b.texts:
        style = ' fill="#1f3a5f" font-weight="bold"' if count else ' fill="#222"'
        parts.append(_text(b.cx, y, line, "middle", FONT, style))
        y += LINE
    return "".join(parts) + "</g>"


def svg(d: Diagram) -> str:
    """The diagram as one ``<svg>`` element (text, escaped)."""
    boxes, width, height = layout(d)
    at = {b.node.id: b for b in boxes}
    right = max(b.x + b.w for b in boxes)
    body: list[str] = []
    lane = right
    for e in d.edges:
        if e.src not in at or e.dst not in at:
            continue
        a, b = at[e.src], at[e.dst]
        if not e.dashed and a.layer >= b.layer and not (a.layer == b.layer and b.x > a.x):
            lane += 14  # each arrow back up gets a lane of its own
        skipped = [s for s in boxes if a.layer < s.layer < b.layer]
        body.extend(_edge(e, a, b, lane, skipped))
    body.extend(_box(b) for b in boxes)
    return _svg(round(width), round(height), body, f"journey {d.journey}")


def page(d: Diagram, emails: dict[str, str] | None = None) -> str:
    """A small self-contained HTML page with the diagram (``clm preview --html``), linking each
    previewed email (step id -> file name beside the page) by a relative path."""
    links = "".join(f'<li><a href="{escape(f)}">{escape(s)}</a></li>'
                    for s, f in (emails or {}).items())
    return ("<!doctype html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{escape(d.journey)}</title><style>body{{font-family:-apple-system,"
            "'Segoe UI','Noto Sans',sans-serif;margin:24px;color:#222}h1{font-size:20px;"
            "color:#1f3a5f}</style></head><body>"
            f"<h1>{escape(d.journey)}</h1>{svg(d)}"
            + (f"<h2>Emails</h2><ul>{links}</ul>" if links else "")
            + "</body></html>\n")
