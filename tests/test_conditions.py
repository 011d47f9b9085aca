"""The condition language: semantics of each operator, and located errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clm_core.conditions import compile_condition
from clm_core.errors import SpecError
from clm_core.yamlspec import parse_yaml

FIELDS = {"p_alive": "number", "n_orders": "number", "stage": "string", "email": "string",
          "gap": "number", "dsl": "number", "vip": "bool", "last": "datetime", "tags": "list"}


@pytest.fixture
def df() -> pd.DataFrame:
    return pd.DataFrame({
        "p_alive": [0.1, 0.5, np.nan, 0.9],
        "n_orders": [1, 2, 0, 7],
        "stage": ["new", "loyal", None, "active"],
        "email": ["a@x.io", None, "c@x.io", "d@y.io"],
        "gap": [10.0, 60.0, 10.0, np.nan],
        "dsl": [25.0, 100.0, 5.0, 1.0],
        "vip": [True, False, False, True],
        "last": pd.to_datetime(["2024-01-01", "2024-06-01", None, "2023-01-01"]),
        "tags": [["a"], [], None, ["a", "b"]],
    })


def mask(text: str, df: pd.DataFrame) -> list[bool]:
    data, loc = parse_yaml(text, "c.yaml")
    return compile_condition(data, FIELDS, loc).mask(df).tolist()


@pytest.mark.parametrize("text,expected", [
    ("{field: p_alive, lt: 0.5}", [True, False, False, False]),
    ("{field: p_alive, gte: 0.5}", [False, True, False, True]),
    ("{field: p_alive, ne: 0.5}", [True, False, False, True]),  # missing never matches
    ("{field: stage, in: [new, active]}", [True, False, False, True]),
    ("{field: stage, not_in: [new]}", [False, True, False, True]),
    ("{field: n_orders, between: [1, 2]}", [True, True, False, False]),
    ("{field: email, exists: false}", [False, True, False, False]),
    ("{field: email, contains: '@x.'}", [True, False, True, False]),
    ("{field: tags, contains: a}", [True, False, False, True]),
    ("{field: vip, eq: true}", [True, False, False, True]),
    ("{field: last, gte: 2024-01-01}", [True, True, False, False]),
    ("{field: dsl, gt: {field: gap, times: 2}}", [True, False, False, False]),
    # missing p_alive is unknown, and not unknown stays unknown: no match
    ("{not: {field: p_alive, lt: 0.5}}", [False, True, False, True]),
    ("{all: [{field: vip, eq: true}, {field: n_orders, gt: 1}]}", [False, False, False, True]),
    ("{any: [{field: stage, eq: loyal}, {field: dsl, lt: 2}]}", [False, True, False, True]),
])
def test_operators(text: str, expected: list[bool], df: pd.DataFrame) -> None:
    assert mask(text, df) == expected


@pytest.mark.parametrize("text,line,col,fragment", [
    ("all:\n  - {field: p_alve, lt: 0.3}\n", 2, 6, "did you mean 'p_alive'"),
    ("all:\n  - {field: stage, gt: 3}\n", 2, 20, "does not apply to string"),
    ("all:\n  - {field: n_orders, btween: [1, 2]}\n", 2, 23, "did you mean 'between'"),
    ("all:\n  - {field: n_orders, lt: x}\n", 2, 23, "is not a number"),
    ("all:\n  - {fild: x}\n", 2, 6, "did you mean 'field'"),
    ("{field: n_orders, between: [5, 2]}", 1, 19, "above high"),
    ("{field: n_orders}", 1, 1, "no operator"),
    ("{all: [], any: []}", 1, 11, "stands alone"),
    ("{field: dsl, gt: {field: stage}}", 1, 19, "cannot compare"),
    ("[1, 2]", 1, 1, "must be a mapping"),
])
def test_errors_are_located(text: str, line: int, col: int, fragment: str) -> None:
    data, loc = parse_yaml(text, "rules.yaml")
    with pytest.raises(SpecError) as info:
        compile_condition(data, FIELDS, loc)
    first = info.value.problems[0]
    assert (first.file, first.line, first.column) == ("rules.yaml", line, col)
    assert fragment in first.message


def test_every_problem_is_reported_at_once() -> None:
    data, loc = parse_yaml("all:\n  - {field: a, lt: 1}\n  - {field: b, lt: 1}\n", "r.yaml")
    with pytest.raises(SpecError) as info:
        compile_condition(data, FIELDS, loc)
    assert [p.line for p in info.value.problems] == [2, 3]


def test_yaml_syntax_error_is_located() -> None:
    with pytest.raises(SpecError) as info:
        parse_yaml("a: [1, 2\nb: 3\n", "broken.yaml")
    assert info.value.problems[0].line == 2
    assert "YAML syntax" in str(info.value)
