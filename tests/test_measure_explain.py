"""``clm explain``: the stage rule and the values that decided it, one customer per stage; and
``clm graph``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import sqlalchemy as sa
from click.testing import CliRunner

from clm import cli
from clm_core.lifecycle.pipeline import LifecycleConfig, score
from clm_core.measure.explain import explain
from clm_core.measure.graph import condition_text, mermaid
from tests.test_lifecycle_rules import REPO, STAGES
from tests.test_lifecycle_scoring import AS_OF, add_order, seed

# the store of test_lifecycle_scoring has 3 repeat buyers: its rhythm is theirs
CONFIG = LifecycleConfig(rules=REPO / "journeys" / "lifecycle.yaml", rhythm_min_buyers=3)


def _leaves(node: dict) -> list[dict]:
    for key in ("all", "any"):
        if key in node:
            return [x for c in node[key] for x in _leaves(c)]
    if "not" in node:
        return _leaves(node["not"])
    return [node]


def test_one_customer_per_stage_shows_the_rule_and_values(engine: sa.Engine) -> None:
    ids = seed(engine)
    score(engine, CONFIG, as_of=AS_OF)
    for ext, stage in (("P", "prospect"), ("N", "new"), ("A", "active"), ("L", "loyal"),
                       ("R", "at_risk"), ("C", "churned")):
        story = explain(engine, CONFIG, ext)
        assert story.stage == stage == story.rules_stage
        tried = [r.stage for r in story.rules]
        assert tried == STAGES[:STAGES.index(stage) + 1]  # every earlier rule, then the match
        assert [r.matched for r in story.rules] == [False] * (len(tried) - 1) + [True]
        last = story.rules[-1]
        if last.check is not None:
            hits = [leaf for leaf in _leaves(last.check) if leaf["result"]]
            assert hits and all("actual" in leaf for leaf in hits)
        assert story.customer["external_id"] == ext and story.scores["customer_id"] == ids[ext]
        assert story.fit is not None and story.fit["model"] == "bgnbd"
        assert story.history[-1]["to_stage"] == stage


def test_changing_one_value_changes_the_explanation(engine: sa.Engine, tmp_path: Path) -> None:
    ids = seed(engine)
    score(engine, CONFIG, as_of=AS_OF)
    url = engine.url.render_as_string(hide_password=False)
    project = tmp_path / "shop"  # the repository's rules, with this store's rhythm (as CONFIG)
    shutil.copytree(REPO / "journeys", project / "journeys")
    (project / "clm.toml").write_text("[clm]\n[lifecycle]\nrhythm_min_buyers = 3\n")
    run = CliRunner()
    before = run.invoke(cli, ["--database", url, "--project", str(project), "explain", "R"])
    assert before.exit_code == 0, before.output
    assert "MATCHED  at_risk" in before.output and "days_since_last_order = 41" in before.output
    add_order(engine, ids["R"], "2024-06-28", 25.0)  # R buys again two days before the as-of date
    stale = explain(engine, CONFIG, "R")
    assert stale.stage == "at_risk" and stale.rules_stage != "at_risk"  # flagged, not hidden
    score(engine, CONFIG, as_of=AS_OF)
    after = run.invoke(cli, ["--database", url, "--project", str(project), "explain", "R",
                             "--json"])
    assert after.exit_code == 0, after.output
    data = json.loads(after.output)
    assert data["stage"] != "at_risk" and data["rules_stage"] == data["stage"]
    assert data["orders"]["purchases"] == 2
    leaves = [leaf for r in data["rules"] if r["check"] for leaf in _leaves(r["check"])]
    assert any(leaf["field"] == "days_since_last_order" and leaf["actual"] == 2 for leaf in leaves)


def test_unknown_customer_is_one_line(engine: sa.Engine) -> None:
    url = engine.url.render_as_string(hide_password=False)
    result = CliRunner().invoke(
        cli, ["--database", url, "--project", str(REPO), "explain", "nobody"]
    )
    assert result.exit_code == 1 and "no customer with external id" in result.output
    assert "Traceback" not in result.output


def test_graph_of_every_journey_names_steps_waits_branches_splits_exits() -> None:
    from clm_core.journeys.loader import load_journey

    j = load_journey(REPO / "journeys" / "second_purchase.yaml")
    text = mermaid(j, {"entered": 257, "converted": 15, "step:reminder": 139})
    assert text.startswith("flowchart TD\n")
    assert 's_test -- "reminder 50%" --> s_reminder' in text
    assert 's_test -- "coupon 50%" --> s_coupon_offer' in text
    assert "entered 257" in text and "converted 15" in text and "reached 139" in text
    assert "wait 3w" in text and "exit (completed)" in text and "coupon 10%" in text
    assert "within 2w" in text
    from clm_core.journeys.store import journey_files

    for path in journey_files(REPO / "journeys"):
        out = mermaid(load_journey(path))
        assert all(f"s_{s.id}" in out for s in load_journey(path).spec.steps)
    cond = {
        "all": [
            {"field": "p_alive", "lt": 0.3},
            {
                "any": [
                    {"field": "n_orders", "eq": 1},
                    {"field": "days", "gt": {"field": "gap", "times": 2}},
                ]
            },
        ]
    }
    assert condition_text(cond) == "(p_alive < 0.3 and (n_orders = 1 or days > 2 × gap))"
    # quotes and angle brackets cannot break out of a Mermaid label
    assert '"' not in mermaid(j, {}).split("start([")[1].split("])")[0].strip('"')
