"""The store report: self-contained, escaped, in two languages, and equal to ``clm lift --json``
and ``clm status``; opened in headless Chromium when it is installed."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from clm import cli
from clm_core.db import tables as t
from clm_core.lifecycle.pipeline import LifecycleConfig, score
from clm_core.measure.attribution import rebuild
from tests.measure_helpers import NOW, build_store
from tests.test_lifecycle_rules import REPO
from tests.test_lifecycle_scoring import AS_OF, seed

HOSTILE = "<img src=x>"  # a locale from an import: customer data, never markup


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for k, v in attrs:
            if k in ("src", "href", "xlink:href", "action", "data") or (v and "url(" in v):
                self.urls.append((tag, k, v or ""))


def _store(engine: sa.Engine) -> None:
    ids = seed(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.update(t.customers).where(t.customers.c.id == ids["A"]).values(locale=HOSTILE)
        )
    score(engine, LifecycleConfig(rules=REPO / "journeys" / "lifecycle.yaml"), as_of=AS_OF)
    build_store(engine, 120, 90, 0.45, 0.25, seed=4)
    rebuild(engine, NOW)


def _cli(engine: sa.Engine, *args: str) -> str:
    url = engine.url.render_as_string(hide_password=False)
    result = CliRunner().invoke(cli, ["--database", url, "--project", str(REPO), *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_report_is_self_contained_escaped_and_matches_lift_and_status(
    engine: sa.Engine, tmp_path: Path
) -> None:
    _store(engine)
    out = tmp_path / "report.html"
    _cli(engine, "report", "--out", str(out))
    html = out.read_text(encoding="utf-8")
    parser = _Links()
    parser.feed(html)
    assert "script" not in parser.tags and "link" not in parser.tags and "iframe" not in parser.tags
    assert all(v.startswith("#") for _, k, v in parser.urls if k != "xmlns"), parser.urls
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html
    assert HOSTILE not in html and "&lt;img src=x&gt;" in html
    for section in ("lifecycle", "value", "churn", "journeys", "model", "deliverability"):
        assert f'<section id="{section}">' in html
    assert html.count("<svg") >= 6
    # the same numbers as clm lift --json ...
    lifted = json.loads(_cli(engine, "lift", "--json"))
    for c in lifted["comparisons"]:
        row = (f'data-comparison="{c["label"]}" data-treated="{c["treated"]}" '
               f'data-control="{c["control"]}" data-lift="{json.dumps(c["conversion"]["diff"])}"')
        assert row in html.replace("&#39;", "'"), row
        if c["revenue_cuped"] is not None:  # CUPED beside the plain figure, the same numbers
            assert f'data-cuped="{json.dumps(c["revenue_cuped"]["diff"])}"' in html
    assert "CUPED" in html and lifted["methods"]["revenue_cuped"] in html
    journey = next(c for c in lifted["comparisons"] if c["scope"] == "journey")
    assert journey["verdict"]["text"] in html
    # ... and as clm status
    status = json.loads(_cli(engine, "status", "--json"))
    for stage, n in status["stages"].items():
        assert f'data-stage="{stage}"><b>{n:,}</b>' in html


def test_report_in_chinese_and_its_summary(engine: sa.Engine, tmp_path: Path) -> None:
    _store(engine)
    out = tmp_path / "zh.html"
    data = json.loads(_cli(engine, "report", "--out", str(out), "--locale", "zh-CN", "--json"))
    html = out.read_text(encoding="utf-8")
    assert '<html lang="zh-CN">' in html and "店铺报告" in html and "生命周期" in html
    assert "95% 区间" in html  # verdicts in Chinese too
    assert data["path"] == str(out) and data["customers"] > 0
    assert data["journeys"][0]["comparison"] == "offer"


def test_report_on_an_empty_store_says_so(engine: sa.Engine, tmp_path: Path) -> None:
    out = tmp_path / "empty.html"
    _cli(engine, "report", "--out", str(out))
    html = out.read_text(encoding="utf-8")
    assert "No enrollment has a complete conversion window yet." in html
    assert "No fit with a holdout period is stored" in html


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs /usr/bin/chromium "
                    "(apt-get install -y chromium)")
def test_report_opens_in_chromium_without_console_errors(engine: sa.Engine, tmp_path: Path) -> None:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="needs playwright (pip install playwright)"
    )
    if engine.dialect.name != "sqlite":
        pytest.skip("one backend is enough for the browser")
    _store(engine)
    out = tmp_path / "report.html"
    _cli(engine, "report", "--out", str(out))
    messages: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page()
        page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: messages.append(f"error: {e}"))
        page.on("request", lambda r: None if r.url.startswith("file:") else messages.append(r.url))
        page.goto(out.as_uri())
        assert page.locator("#lift tr").count() > 2
        assert page.locator("section#churn svg").count() >= 2
        assert page.locator("section#journeys .diagram svg").count() >= 1
        # the lift table, CUPED lines included, fits the report's own width: nothing to scroll to
        page.set_viewport_size({"width": 1200, "height": 900})
        assert page.locator("#lift .sub").count() >= 1
        table, box = page.evaluate("() => { const t = document.querySelector('#lift');"
                                   " return [t.scrollWidth, t.parentElement.clientWidth]; }")
        assert table <= box, (table, box)
        browser.close()
    assert messages == []


def test_retention_and_first_order_bands_equal_a_pandas_computation_over_every_order(
    engine: sa.Engine,
) -> None:
    """The report reads only the drawn cohorts' orders and codes stages in SQL; the figures must
    equal the plain computation over every order (two years of cohorts, some cancelled orders,
    so the restriction to the latest twelve cohorts and the purchase rule both matter)."""
    import numpy as np
    import pandas as pd

    from clm_core.db.bulk import write_frame
    from clm_core.ingest.synthetic import load_synthetic
    from clm_core.lifecycle.features import NOT_PURCHASES
    from clm_core.measure.report import COHORT_MONTHS, MAX_COHORTS, _churn_by, _retention

    load_synthetic(engine, 1_500, seed=3)
    rng = np.random.default_rng(3)
    with engine.begin() as conn:
        ids = conn.execute(sa.select(t.orders.c.id)).scalars().all()
        cancelled = [int(i) for i in rng.choice(ids, size=len(ids) // 20, replace=False)]
        conn.execute(sa.update(t.orders).where(t.orders.c.id.in_(cancelled))
                     .values(status="cancelled"))
        orders = pd.DataFrame(conn.execute(sa.select(
            t.orders.c.customer_id, t.orders.c.ordered_at, t.orders.c.amount, t.orders.c.status
        )).all(), columns=["customer_id", "ordered_at", "amount", "status"])
        orders["ordered_at"] = pd.to_datetime(orders["ordered_at"])
        orders["amount"] = orders["amount"].astype(float)
        bought = orders[~orders["status"].isin(NOT_PURCHASES)]
        first = bought.groupby("customer_id")["ordered_at"].min().rename("first_order_at")
        stages = rng.choice(["active", "at_risk", "churned", "loyal"], size=len(first))
        write_frame(conn, t.customer_scores, pd.DataFrame({
            "customer_id": first.index, "as_of": pd.Timestamp("2026-07-01").date(),
            "n_orders": bought.groupby("customer_id").size().reindex(first.index).to_numpy(),
            "first_order_at": first.to_numpy(), "stage": stages,
            "recorded_at": pd.Timestamp("2026-07-01")}))
    with engine.connect() as conn:
        got = _retention(conn)
        bands = _churn_by(conn)["first_order_value"]

    # retention: every cohort's distinct buyers per month after the first order
    b = bought.join(first, on="customer_id")
    b["cohort"] = b["first_order_at"].dt.to_period("M")
    b["k"] = (b["ordered_at"].dt.year * 12 + b["ordered_at"].dt.month) - (
        b["first_order_at"].dt.year * 12 + b["first_order_at"].dt.month)
    b = b[(b["k"] >= 1) & (b["k"] <= COHORT_MONTHS)]
    latest = b["ordered_at"].dt.to_period("M").max()
    size = first.dt.to_period("M").value_counts()
    cohorts = sorted(size.index)[-MAX_COHORTS:]
    assert len(size) > MAX_COHORTS  # older cohorts exist and are left out
    active = b.groupby(["cohort", "k"])["customer_id"].nunique()
    want = [{"cohort": str(c), "customers": int(size[c]),
             "curve": [active.get((c, k), 0) / size[c] if k <= (latest - c).n else None
                       for k in range(1, COHORT_MONTHS + 1)]} for c in cohorts]
    assert [r["cohort"] for r in got] == [w["cohort"] for w in want]
    for g, w in zip(got, want):
        assert g["customers"] == w["customers"]
        assert g["curve"] == pytest.approx(w["curve"])
    assert any(v is None for v in got[-1]["curve"])  # the newest cohort is still being observed

    # first-order value: quintiles of the first purchase's amount, churned and at-risk shares
    firsts = bought.merge(first.reset_index(), on="customer_id")
    firsts = firsts[firsts["ordered_at"] == firsts["first_order_at"]]
    per = firsts.groupby("customer_id")["amount"].max().to_frame()
    per["stage"] = pd.Series(stages, index=first.index)
    edges = np.unique(np.quantile(per["amount"], [0, 0.2, 0.4, 0.6, 0.8, 1.0]))
    band = pd.cut(per["amount"], edges, include_lowest=True)
    ref = per.groupby(band, observed=True)["stage"]
    assert [r["customers"] for r in bands] == ref.size().tolist()
    assert [r["churned"] for r in bands] == pytest.approx(
        ref.apply(lambda s: (s == "churned").mean()).tolist())
    assert [r["at_risk"] for r in bands] == pytest.approx(
        ref.apply(lambda s: (s == "at_risk").mean()).tolist())


def test_heatmap_rows_keep_their_whole_names() -> None:
    """Row names are drawn whole, right-aligned at the edge of a margin wide enough for the
    longest (a journey called programme_welcome was cut to 16 characters and clipped)."""
    import re

    from clm_core.measure.charts import heatmap

    rows = ["at_risk", "programme_welcome"]
    svg = heatmap(rows, ["entered", "sent"], lambda i, j: float(i + j + 1), "funnel")
    for name in rows:
        assert f">{name}<" in svg
    anchors = [float(x) for x in re.findall(r'<text x="([0-9.]+)"[^>]*text-anchor="end"', svg)]
    assert anchors and min(anchors) >= 7 * len("programme_welcome")
