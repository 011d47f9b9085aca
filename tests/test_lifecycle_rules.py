"""Stage rules: the default file, first-match-wins, and a located error for each kind of mistake."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clm_core.errors import SpecError
from clm_core.lifecycle.rfm import SEGMENT_GRID, SEGMENTS, quintile_score, rfm
from clm_core.lifecycle.stages import load_rules, parse_rules

REPO = Path(__file__).resolve().parent.parent
STAGES = ["prospect", "churned", "reactivated", "at_risk", "new", "loyal", "active"]


def test_default_rules_compile_with_the_seven_stages() -> None:
    rules = load_rules(REPO / "journeys" / "lifecycle.yaml")
    assert rules.names == STAGES
    assert {"p_alive", "typical_gap_days", "previous_stage"} <= rules.fields


def test_first_match_wins_and_catch_all_takes_the_rest() -> None:
    rules = parse_rules("""
stages:
  - name: big
    when: {field: total_spend, gte: 100}
  - name: alive
    when: {field: p_alive, gt: {field: typical_gap_days, times: 0.01}}
  - name: rest
""")
    df = pd.DataFrame({"total_spend": [150.0, 10.0, 10.0, np.nan],
                       "p_alive": [0.1, 0.9, 0.2, 0.9], "typical_gap_days": [30.0] * 4})
    assert rules.assign(df).tolist() == ["big", "alive", "rest", "alive"]


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as err:
        parse_rules(text, "lifecycle.yaml")
    return [str(p) for p in err.value.problems]


def test_yaml_syntax_error_is_located() -> None:
    (msg,) = problems("stages:\n  - name: new\n    when: {field: n_orders, eq: 1\n")
    assert msg.startswith("lifecycle.yaml:4:") and "YAML syntax" in msg


def test_unknown_metric_is_located_with_a_suggestion() -> None:
    (msg,) = problems("stages:\n  - name: churned\n    when: {field: p_alve, lt: 0.3}\n")
    assert msg.startswith("lifecycle.yaml:3:12:") and "unknown field 'p_alve'" in msg
    assert "did you mean 'p_alive'" in msg


def test_wrong_value_type_is_located() -> None:
    (msg,) = problems(
        "stages:\n  - name: churned\n    when:\n      field: p_alive\n      lt: low\n"
    )
    assert msg.startswith("lifecycle.yaml:5:7:") and "'p_alive' is a number field" in msg


def test_unknown_operator_is_located_with_a_suggestion() -> None:
    (msg,) = problems("stages:\n  - name: churned\n    when: {field: p_alive, less_than: 0.3}\n")
    assert msg.startswith("lifecycle.yaml:3:") and "unknown operator 'less_than'" in msg


def test_malformed_condition_is_located() -> None:
    (msg,) = problems(
        "stages:\n  - name: churned\n    when:\n      any: {field: p_alive, lt: 0.3}\n"
    )
    assert msg.startswith("lifecycle.yaml:4:7:") and "'any' takes a non-empty list" in msg


def test_unknown_key_in_a_stage_gets_a_suggestion() -> None:
    (msg,) = problems("stages:\n  - name: new\n    wen: {field: n_orders, eq: 1}\n")
    assert msg.startswith("lifecycle.yaml:3:5:") and "unknown key 'wen'" in msg
    assert "did you mean 'when'" in msg


def test_unknown_previous_stage_gets_a_suggestion() -> None:
    (msg,) = problems("stages:\n  - name: churned\n    when: {field: p_alive, lt: 0.3}\n"
                      "  - name: back\n    when: {field: previous_stage, eq: churn}\n")
    assert msg.startswith("lifecycle.yaml:5:") and "unknown stage 'churn'" in msg
    assert "did you mean 'churned'" in msg


def test_duplicate_and_unreachable_stages_are_reported_together() -> None:
    msgs = problems("stages:\n  - name: rest\n  - name: new\n    when: {field: n_orders, eq: 1}\n"
                    "  - name: new\n    when: {field: n_orders, eq: 2}\n")
    assert len(msgs) == 2
    assert msgs[0].startswith("lifecycle.yaml:2:5:") and "new can never match" in msgs[0]
    assert msgs[1].startswith("lifecycle.yaml:5:") and "'new' is already defined" in msgs[1]


def test_missing_stages_list() -> None:
    msgs = problems("stage:\n  - name: new\n")
    assert any("unknown key 'stage'" in m and "did you mean 'stages'" in m for m in msgs)
    assert any("missing required key 'stages'" in m for m in msgs)


def test_segment_map_names_every_cell_once() -> None:
    cells = SEGMENT_GRID[1:, 1:]
    assert all(c in SEGMENTS for c in cells.ravel())
    assert set(cells.ravel()) == set(SEGMENTS) and len(SEGMENTS) == 10
    assert SEGMENT_GRID[5, 1] == "new_customers" and SEGMENT_GRID[1, 5] == "cant_lose_them"


def test_quintiles_share_scores_on_ties() -> None:
    s = pd.Series([1, 1, 1, 1, 1, 1, 2, 3, 4, 5], dtype=float)
    assert quintile_score(s).tolist() == [1, 1, 1, 1, 1, 1, 4, 4, 5, 5]
    days = pd.Series([0.0, 10, 20, 30, 40, 50, 60, 70, 80, 90])
    assert quintile_score(days, higher_is_better=False).tolist() == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]


def test_rfm_leaves_prospects_unscored() -> None:
    df = pd.DataFrame({"n_orders": [0, 1, 3], "days_since_last_order": [np.nan, 5.0, 50.0],
                       "purchase_days": [0, 1, 3], "total_spend": [0.0, 20.0, 90.0]})
    out = rfm(df)
    # Two buyers: the recent one-time buyer is R3 F1, the older repeat buyer R1 F3.
    assert out["rfm_segment"].tolist() == [None, "about_to_sleep", "at_risk"]
    assert out["r_score"].isna().tolist() == [True, False, False]
