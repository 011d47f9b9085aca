"""Property tests of the condition language's three-valued logic: a comparison with a missing
value is unknown, ``not unknown`` stays unknown, and ``all``/``any`` follow Kleene's tables.
The compiled pandas masks are checked against a plain per-row evaluator."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from clm_core.conditions import compile_condition
from clm_core.yamlspec import Locator

FIELDS = {"a": "number", "b": "number", "c": "number"}
LOC = Locator("c.yaml", {})

values = st.one_of(st.none(), st.integers(-3, 3).map(float))
leaves = st.one_of(
    st.builds(
        lambda f, op, v: {"field": f, op: v},
        st.sampled_from(sorted(FIELDS)),
        st.sampled_from(["lt", "lte", "gt", "gte", "eq", "ne"]),
        st.integers(-3, 3),
    ),
    st.builds(
        lambda f, g: {"field": f, "gt": {"field": g}},
        st.sampled_from(sorted(FIELDS)),
        st.sampled_from(sorted(FIELDS)),
    ),
    st.builds(
        lambda f, v: {"field": f, "exists": v}, st.sampled_from(sorted(FIELDS)), st.booleans()
    ),
)
conditions = st.recursive(leaves, lambda kids: st.one_of(
    kids.map(lambda k: {"not": k}),
    st.lists(kids, min_size=1, max_size=3).map(lambda ks: {"all": ks}),
    st.lists(kids, min_size=1, max_size=3).map(lambda ks: {"any": ks}),
), max_leaves=8)
frames = st.lists(st.fixed_dictionaries({k: values for k in FIELDS}), min_size=1, max_size=12)

COMPARE = {"lt": lambda x, y: x < y, "lte": lambda x, y: x <= y, "gt": lambda x, y: x > y,
           "gte": lambda x, y: x >= y, "eq": lambda x, y: x == y, "ne": lambda x, y: x != y}


def kleene(node: dict[str, Any], row: dict[str, float | None]) -> bool | None:
    """True, False or None (unknown) for one row, straight from the truth tables."""
    if "not" in node:
        inner = kleene(node["not"], row)
        return None if inner is None else not inner
    if "all" in node:
        parts = [kleene(k, row) for k in node["all"]]
        return False if False in parts else (None if None in parts else True)
    if "any" in node:
        parts = [kleene(k, row) for k in node["any"]]
        return True if True in parts else (None if None in parts else False)
    x = row[node["field"]]
    if "exists" in node:
        return (x is not None) == node["exists"]
    op = next(k for k in node if k != "field")
    y = node[op]
    if isinstance(y, dict):
        y = row[y["field"]]
    if x is None or y is None:
        return None
    return COMPARE[op](x, y)


def frame(rows: list[dict[str, float | None]]) -> pd.DataFrame:
    return pd.DataFrame({k: [np.nan if r[k] is None else r[k] for r in rows] for k in FIELDS},
                        dtype="float64")


@settings(max_examples=120, deadline=None)
@given(conditions, frames)
def test_masks_follow_three_valued_logic(node: dict[str, Any], rows: list[dict]) -> None:
    df = frame(rows)
    cond = compile_condition(node, FIELDS, LOC)
    expected = [kleene(node, r) for r in rows]
    assert cond.mask(df).tolist() == [e is True for e in expected]
    _, known = cond.truth(df)
    assert known.tolist() == [e is not None for e in expected]
    # not: true and false swap, unknown stays unknown, so c and not c never both match ...
    negated = compile_condition({"not": node}, FIELDS, LOC).mask(df)
    assert not (cond.mask(df) & negated).any()
    assert negated.tolist() == [e is False for e in expected]
    # ... and together they cover exactly the rows where c is known
    assert (cond.mask(df) | negated).tolist() == known.tolist()


@settings(max_examples=50, deadline=None)
@given(frames)
def test_not_of_a_comparison_with_a_missing_value_never_matches(rows: list[dict]) -> None:
    df = frame(rows)
    for op in COMPARE:
        m = compile_condition({"not": {"field": "a", op: 0}}, FIELDS, LOC).mask(df)
        assert not m[df["a"].isna()].any()
        double = compile_condition({"not": {"not": {"field": "a", op: 0}}}, FIELDS, LOC).mask(df)
        assert (
            double.tolist()
            == compile_condition({"field": "a", op: 0}, FIELDS, LOC).mask(df).tolist()
        )


@settings(max_examples=80, deadline=None)
@given(conditions, frames, st.sampled_from(["int-or-float", "Float64", "object"]))
def test_the_mask_does_not_depend_on_how_a_column_is_stored(node: dict[str, Any],
                                                             rows: list[dict],
                                                             storage: str) -> None:
    """Plain numpy numbers take the array path; nullable and object columns the general one.
    Both follow the same tables (an int64 column has no missing values, so rows with one are
    stored as float64 there)."""
    df = frame(rows)
    if storage == "int-or-float":
        df = df.apply(lambda c: c.astype("int64") if c.notna().all() else c)
    else:
        df = df.astype(storage)
    cond = compile_condition(node, FIELDS, LOC)
    assert cond.mask(df).tolist() == [kleene(node, r) is True for r in rows]
