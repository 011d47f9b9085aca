"""The journey diagram as inline SVG: every step and count drawn, text escaped, boxes in layers;
shown in the store report and written by ``clm preview --html``."""

from __future__ import annotations

import re
from pathlib import Path

import sqlalchemy as sa

from clm_core.db import tables as t
from clm_core.journeys.loader import load_journey, parse_journey
from clm_core.measure.attribution import rebuild
from clm_core.measure.diagram import layout, svg
from clm_core.measure.graph import structure
from tests.measure_helpers import NOW, build_store
from tests.test_measure_report import _cli

REPO = Path(__file__).resolve().parent.parent

SKIPPING = """
name: nudge
entry:
  stage: {to: at_risk}
steps:
  - id: ask
    send: {channel: email, template: at_risk_checkin}
  - id: later
    wait: 3d
  - id: again
    branch:
      - when: {field: locale, eq: "<img src=x onerror=alert(1)>"}
        goto: stop
  - id: offer
    send: {channel: email, template: at_risk_offer}
  - id: stop
    exit: {reason: gave_up}
"""


def _texts(picture: str) -> list[str]:
    return re.findall(r"<text [^>]*>([^<]*)</text>", picture)


def test_svg_draws_every_step_with_the_counts_where_known() -> None:
    j = load_journey(REPO / "journeys" / "second_purchase.yaml")
    counts = {"entered": 257, "converted": 15, "step:reminder": 139, "step:coupon_offer": 101}
    picture = svg(structure(j, counts))
    texts = _texts(picture)
    assert picture.startswith("<svg") and picture.endswith("</svg>")
    for step in j.spec.steps:
        assert any(x.startswith(f"{step.id}: ") for x in texts), step.id
    assert "entered 257" in texts and "converted 15" in texts
    assert "reached 139" in texts and "reached 101" in texts
    assert "reminder 50%" in texts and "coupon 50%" in texts and "within 2w" in texts
    assert "holdout 10%" in texts and "coupon 10%" in texts
    # no count is made up where the store knows none
    assert not any(x.startswith("reached") for x in _texts(svg(structure(j, {}))))
    assert "<script" not in picture and "url(" not in picture and "href" not in picture


def test_boxes_are_layered_in_the_order_customers_move() -> None:
    j = load_journey(REPO / "journeys" / "second_purchase.yaml")
    boxes, width, height = layout(structure(j))
    y = {b.node.id: b.y for b in boxes}
    assert y["start"] == y["goal"] < y["s_test"] < y["s_reminder"] == y["s_coupon_offer"]
    assert y["s_coupon_offer"] < y["s_measure"] < y["s_done"]
    assert all(b.x >= 0 and b.x + b.w <= width and b.y + b.h <= height for b in boxes)
    # a branch that skips a step: the step it skips sits between them, and the skipping arrow
    # runs beside it rather than through it
    d = structure(parse_journey(SKIPPING, "nudge.yaml"))
    skipping = {b.node.id: b for b in layout(d)[0]}
    y = {k: b.y for k, b in skipping.items()}
    assert y["start"] < y["s_ask"] < y["s_later"] < y["s_again"] < y["s_offer"] < y["s_stop"]
    offer = skipping["s_offer"]
    side = re.findall(r'<path d="M[^"]*L([\d.]+),', svg(d))
    assert any(float(x) > offer.x + offer.w or float(x) < offer.x for x in side)


def test_an_arrow_back_up_runs_in_the_margin_and_keeps_the_layers() -> None:
    """The loader refuses cycles; a structure built by hand with one still lays out."""
    from clm_core.measure.graph import Diagram, Edge, Node

    nodes = tuple(Node(i, k, (i,)) for i, k in (("start", "start"), ("a", "send"),
                                                 ("b", "wait"), ("goal", "goal")))
    edges = (Edge("start", "a"), Edge("a", "b"), Edge("b", "a", "again"),
             Edge("start", "goal", "within 2w", dashed=True))
    d = Diagram("loop", nodes, edges)
    boxes, width, _ = layout(d)
    at = {b.node.id: b for b in boxes}
    assert at["start"].y < at["a"].y < at["b"].y
    back = re.findall(r'<path d="M[\d.]+,[\d.]+ L([\d.]+),', svg(d))
    assert any(float(x) > max(b.x + b.w for b in boxes) for x in back)
    assert max(float(x) for x in back) <= width


def test_customer_text_in_conditions_is_escaped() -> None:
    picture = svg(structure(parse_journey(SKIPPING, "nudge.yaml")))
    assert "<img" not in picture and "onerror=alert" in picture  # as text, never markup
    assert "&lt;img" in picture
    assert "stop: exit (gave_up)" in _texts(picture)


def test_report_and_preview_show_the_diagram_with_the_stores_counts(
    engine: sa.Engine, tmp_path: Path
) -> None:
    build_store(engine, 60, 40, 0.5, 0.2, seed=7, journey="winback")
    rebuild(engine, NOW)
    with engine.connect() as conn:  # the counts, counted here from the tables
        entered = conn.execute(sa.select(sa.func.count()).select_from(t.journey_enrollments)
                               .where(t.journey_enrollments.c.journey == "winback")).scalar()
        converted = conn.execute(sa.select(sa.func.count()).select_from(t.attributions).where(
            t.attributions.c.journey == "winback", t.attributions.c.goal.is_not(None))).scalar()
    assert entered == 100 and converted

    out = tmp_path / "report.html"
    _cli(engine, "report", "--out", str(out))
    html = out.read_text(encoding="utf-8")
    journeys = html.split('<section id="journeys">')[1].split("</section>")[0]
    picture = journeys.split('aria-label="journey winback"')[1].split("</svg>")[0]
    texts = _texts(picture)
    assert f"entered {entered:,}" in texts and f"converted {converted:,}" in texts
    for step in ("offer", "pause", "reminder", "measure", "done"):
        assert any(x.startswith(f"{step}: ") for x in texts), step
    assert journeys.count("<svg") >= len(list((REPO / "journeys").glob("*.yaml"))) - 3

    with engine.begin() as conn:  # an explicit id: the store above took ids 1..100 itself
        conn.execute(t.customers.insert().values(
            id=10_000, external_id="mail-en", name="Alex Morgan", locale="en",
            email="mail-en@example.com", consent_email=True))
    shown = _cli(engine, "preview", "winback", "--customer", "mail-en",
                 "--html", str(tmp_path / "preview"))
    page = (tmp_path / "preview" / "winback.html").read_text(encoding="utf-8")
    assert f"(journey diagram: {tmp_path / 'preview' / 'winback.html'})" in shown
    texts = _texts(page)
    assert f"entered {entered:,}" in texts and f"converted {converted:,}" in texts
    assert 'href="winback-offer.html"' in page and (tmp_path / "preview" / "winback-offer.html"
                                                     ).exists()
    assert "<script" not in page and "http" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
