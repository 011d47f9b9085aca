"""The condition language of stage rules and journeys, compiled to vectorised pandas masks.

A condition is YAML data, never code::

    {field: p_alive, lt: 0.3}                       # comparison: eq ne lt lte gt gte
    {field: stage, in: [loyal, active]}             # in / not_in a list
    {field: days_since_last_order, between: [30, 90]}   # inclusive
    {field: email, exists: true}                    # not null (false: is null)
    {field: tags, contains: vip}                    # substring or list member
    {field: days_since_last_order, gt: {field: typical_gap_days, times: 2}}  # another column
    {all: [...]}, {any: [...]}, {not: {...}}
    {event: opened, within: 3d}                     # an engagement event in the last 3 days

``{event: X, within: D}`` is shorthand for ``{field: days_since_X, lte: D in days}``; it needs
the field ``days_since_X`` on offer (journeys derive ``days_since_opened`` and
``days_since_clicked`` from the events that provider callbacks record).

Compilation checks every field name (with "did you mean"), operator and value type against the
fields on offer and reports every problem with its file:line:column at once.

Missing values follow three-valued (Kleene) logic. A comparison with a missing value (NaN/None,
on either side) is *unknown*, neither true nor false; only ``exists`` is always known.
``not`` turns true into false and false into true, and leaves unknown unknown; ``all`` is false
when any part is false, true when all are true, unknown otherwise; ``any`` is true when any part
is true, false when all are false, unknown otherwise. A condition matches only where it is
true, so ``{not: {field: p_alive, lt: 0.3}}`` does not match a prospect without ``p_alive``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd

from clm_core.errors import Problem, SpecError
from clm_core.suggest import did_you_mean
from clm_core.yamlspec import Locator

TYPES = ("number", "string", "bool", "datetime", "list")
COMPARE = ("eq", "ne", "lt", "lte", "gt", "gte")
OPERATORS: dict[str, tuple[str, ...]] = {
    "number": (*COMPARE, "between", "in", "not_in", "exists"),
    "string": ("eq", "ne", "in", "not_in", "contains", "exists"),
    "bool": ("eq", "ne", "exists"),
    "datetime": (*COMPARE, "between", "exists"),
    "list": ("contains", "exists"),
}
ALL_OPS = sorted({op for ops in OPERATORS.values() for op in ops})
LOGICAL = ("all", "any", "not")


@dataclass(frozen=True)
class FieldRef:
    """A value taken from another column, optionally scaled."""

    name: str
    times: float = 1.0


class Condition:
    """A compiled condition: ``mask(df)`` is a boolean Series aligned with ``df``, True where
    the condition holds; ``truth(df)`` gives (holds, known) for three-valued logic."""

    def mask(self, df: pd.DataFrame) -> pd.Series:
        holds, known = self.truth(df)
        return pd.Series(holds & known, index=df.index, dtype=bool)

    def truth(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(value, known) as boolean arrays aligned with ``df``'s rows: where ``known`` is False
        the value is unknown (and ``value`` False). Arrays, not Series: a stage rule or an
        audience combines a dozen comparisons over every customer at every run, and pandas'
        per-operation overhead was most of that cost."""
        raise NotImplementedError

    @property
    def fields(self) -> set[str]:
        raise NotImplementedError


_NUMPY_OPS = {"eq": np.equal, "ne": np.not_equal, "lt": np.less, "lte": np.less_equal,
              "gt": np.greater, "gte": np.greater_equal}


def _plain_numbers(s: pd.Series) -> tuple[np.ndarray, np.ndarray] | None:
    """``s``'s values and where they are present, when it is a plain numpy number or bool
    column (NaN the only missing value); None for anything else (strings, datetimes,
    nullable types), which takes the general path."""
    if not isinstance(s.dtype, np.dtype) or s.dtype.kind not in "biuf":
        return None
    a = s.to_numpy()
    return a, (~np.isnan(a) if s.dtype.kind == "f" else np.ones(len(a), dtype=bool))


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class Compare(Condition):
    field: str
    op: str
    value: Any

    @property
    def fields(self) -> set[str]:
        return {self.field} | ({self.value.name} if isinstance(self.value, FieldRef) else set())

    def _operand(self, df: pd.DataFrame) -> Any:
        if isinstance(self.value, FieldRef):
            other = df[self.value.name]
            return other * self.value.times if self.value.times != 1.0 else other
        return self.value

    def _numeric(self, s: pd.Series, v: Any) -> tuple[np.ndarray, np.ndarray] | None:
        """The comparison on numpy arrays, where both sides are plain numbers (the common case
        of scores and day counts); None where the general path is needed. A NaN on either side
        is unknown, as in the general path."""
        left = _plain_numbers(s)
        if left is None or self.op not in (*COMPARE, "between"):
            return None
        a, known = left
        if isinstance(v, pd.Series):
            right = _plain_numbers(v)
            if right is None or self.op == "between":
                return None
            b, known_b = right
            known = known & known_b
            return _NUMPY_OPS[self.op](a, b) & known, known
        if self.op == "between":
            lo, hi = v
            if not (_number(lo) and _number(hi)):
                return None
            return (a >= lo) & (a <= hi) & known, known
        if not _number(v):
            return None
        return _NUMPY_OPS[self.op](a, v) & known, known

    def truth(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        s = df[self.field]
        op = self.op
        if op == "exists":
            present = s.notna().to_numpy(bool)
            return (present if self.value else ~present), np.ones(len(df), dtype=bool)
        v = self._operand(df)
        fast = self._numeric(s, v)
        if fast is not None:
            return fast
        present = s.notna()
        if op in ("in", "not_in"):
            hit = s.isin(list(v))
            out = hit if op == "in" else ~hit
        elif op == "between":
            lo, hi = v
            out = (s >= lo) & (s <= hi)
        elif op == "contains":
            if s.dtype == object and s.map(lambda x: isinstance(x, (list, tuple, set))).any():
                out = s.map(lambda x: isinstance(x, (list, tuple, set)) and v in x)
            else:
                out = s.astype("string").str.contains(str(v), regex=False)
        else:
            out = {"eq": s.__eq__, "ne": s.__ne__, "lt": s.__lt__, "lte": s.__le__,
                   "gt": s.__gt__, "gte": s.__ge__}[op](v)
        known = (present & v.notna() if isinstance(v, pd.Series) else present).to_numpy(bool)
        holds = pd.Series(out, index=df.index).fillna(False).astype(bool).to_numpy() & known
        return holds, known


@dataclass(frozen=True)
class AllOf(Condition):
    children: tuple[Condition, ...]

    @property
    def fields(self) -> set[str]:
        return set().union(*(c.fields for c in self.children))

    def truth(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        all_true = np.ones(len(df), dtype=bool)
        any_false = np.zeros(len(df), dtype=bool)
        for c in self.children:
            holds, known = c.truth(df)
            all_true &= holds & known
            any_false |= ~holds & known
        # known: false as soon as one part is false, true only when every part is true
        return all_true, all_true | any_false


@dataclass(frozen=True)
class AnyOf(AllOf):
    def truth(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        any_true = np.zeros(len(df), dtype=bool)
        all_false = np.ones(len(df), dtype=bool)
        for c in self.children:
            holds, known = c.truth(df)
            any_true |= holds & known
            all_false &= ~holds & known
        return any_true, any_true | all_false


@dataclass(frozen=True)
class Not(Condition):
    child: Condition

    @property
    def fields(self) -> set[str]:
        return self.child.fields

    def truth(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        holds, known = self.child.truth(df)
        return ~holds & known, known  # not unknown is unknown


class _Compiler:
    def __init__(self, fields: Mapping[str, str], loc: Locator):
        self.fields = fields
        self.loc = loc
        self.problems: list[Problem] = []

    def fail(self, path: Sequence[str | int], message: str) -> None:
        self.problems.append(self.loc.problem(path, message))

    def node(self, node: Any, path: tuple[str | int, ...]) -> Condition | None:
        if not isinstance(node, dict) or not node:
            self.fail(path, f"a condition must be a mapping such as {{field: NAME, gt: 1}} "
                            f"or {{all: [...]}}, got {node!r}")
            return None
        logical = [k for k in node if k in LOGICAL]
        if logical:
            if len(node) != 1:
                extra = [k for k in node if k != logical[0]]
                self.fail(path + (extra[0],), f"{logical[0]!r} stands alone in its mapping; "
                                              f"found also {', '.join(map(repr, extra))}")
                return None
            key = logical[0]
            body = node[key]
            if key == "not":
                child = self.node(body, path + (key,))
                return Not(child) if child else None
            if not isinstance(body, list) or not body:
                self.fail(path + (key,), f"{key!r} takes a non-empty list of conditions")
                return None
            kids = [self.node(c, path + (key, i)) for i, c in enumerate(body)]
            if any(k is None for k in kids):
                return None
            return (AllOf if key == "all" else AnyOf)(tuple(kids))  # type: ignore[arg-type]
        return self.leaf(node, path)

    def event(self, node: dict[str, Any], path: tuple[str | int, ...]) -> Condition | None:
        from clm_core.journeys.model import parse_duration

        name, extra = node["event"], sorted(set(node) - {"event", "within"})
        events = sorted(f.removeprefix("days_since_") for f in self.fields
                        if f.startswith("days_since_"))
        if extra:
            self.fail(path + (extra[0],), f"unknown key {extra[0]!r} in an event condition; "
                                          "it takes 'event' and 'within' (e.g. within: 3d)")
            return None
        if not isinstance(name, str) or f"days_since_{name}" not in self.fields:
            self.fail(path + ("event",), f"unknown event {name!r}"
                      f"{did_you_mean(str(name), events)}; events on offer: "
                      f"{', '.join(events) or 'none'}")
            return None
        if "within" not in node:
            self.fail(path, f"event condition on {name!r} needs 'within' (e.g. within: 3d)")
            return None
        try:
            days = parse_duration(node["within"]).total_seconds() / 86400
        except ValueError as exc:
            self.fail(path + ("within",), str(exc))
            return None
        return Compare(f"days_since_{name}", "lte", days)

    def leaf(self, node: dict[str, Any], path: tuple[str | int, ...]) -> Condition | None:
        if "event" in node and "field" not in node:
            return self.event(node, path)
        if "field" not in node:
            unknown = next(iter(node))
            self.fail(path + (unknown,), f"unknown key {unknown!r}"
                      f"{did_you_mean(str(unknown), ['field', *LOGICAL])}: a condition needs "
                      f"'field' and one operator, or one of all/any/not")
            return None
        name = node["field"]
        if not isinstance(name, str) or name not in self.fields:
            self.fail(
                path + ("field",),
                f"unknown field {name!r}{did_you_mean(str(name), self.fields)}; "
                f"available: {', '.join(sorted(self.fields))}",
            )
            return None
        ftype = self.fields[name]
        ops = [k for k in node if k != "field"]
        if len(ops) != 1:
            what = "no operator" if not ops else f"several operators ({', '.join(ops)})"
            self.fail(path, f"condition on {name!r} has {what}; use exactly one of "
                            f"{', '.join(OPERATORS[ftype])}")
            return None
        op = ops[0]
        if op not in ALL_OPS:
            self.fail(
                path + (op,),
                f"unknown operator {op!r}{did_you_mean(op, OPERATORS[ftype])}; "
                f"operators for {ftype} field {name!r}: {', '.join(OPERATORS[ftype])}",
            )
            return None
        if op not in OPERATORS[ftype]:
            self.fail(path + (op,), f"operator {op!r} does not apply to {ftype} field {name!r}; "
                                    f"use one of {', '.join(OPERATORS[ftype])}")
            return None
        value = self.value(node[op], op, ftype, name, path + (op,))
        return None if value is _BAD else Compare(name, op, value)

    def value(self, raw: Any, op: str, ftype: str, name: str, path: tuple[str | int, ...]) -> Any:
        if op == "exists":
            if not isinstance(raw, bool):
                self.fail(path, f"'exists' takes true or false, got {raw!r}")
                return _BAD
            return raw
        if isinstance(raw, dict):
            return self.ref(raw, ftype, path)
        if op in ("in", "not_in"):
            if not isinstance(raw, list) or not raw:
                self.fail(path, f"{op!r} takes a non-empty list, got {raw!r}")
                return _BAD
            vals = [self.scalar(v, ftype, name, path + (i,)) for i, v in enumerate(raw)]
            return _BAD if any(v is _BAD for v in vals) else tuple(vals)
        if op == "between":
            if not isinstance(raw, list) or len(raw) != 2:
                self.fail(path, f"'between' takes [low, high], got {raw!r}")
                return _BAD
            lo, hi = (self.scalar(v, ftype, name, path + (i,)) for i, v in enumerate(raw))
            if _BAD in (lo, hi):
                return _BAD
            if lo > hi:
                self.fail(path, f"'between' low {raw[0]!r} is above high {raw[1]!r}")
                return _BAD
            return (lo, hi)
        if op == "contains":
            if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
                self.fail(path, f"'contains' takes a string or number, got {raw!r}")
                return _BAD
            return raw
        return self.scalar(raw, ftype, name, path)

    def ref(self, raw: dict[str, Any], ftype: str, path: tuple[str | int, ...]) -> Any:
        other = raw.get("field")
        extra = set(raw) - {"field", "times"}
        if other is None or extra:
            bad = next(iter(extra)) if extra else None
            self.fail(path + ((bad,) if bad else ()), "a value from another column is written "
                      "{field: NAME} or {field: NAME, times: 2}"
                      + (f"; unknown key {bad!r}" if bad else ""))
            return _BAD
        if other not in self.fields:
            self.fail(
                path + ("field",), f"unknown field {other!r}{did_you_mean(str(other), self.fields)}"
            )
            return _BAD
        if self.fields[other] != ftype:
            self.fail(
                path + ("field",),
                f"cannot compare a {ftype} field with {self.fields[other]} field {other!r}",
            )
            return _BAD
        times = raw.get("times", 1.0)
        if "times" in raw and (ftype != "number" or isinstance(times, bool)
                               or not isinstance(times, (int, float))):
            self.fail(path + ("times",), "'times' takes a number and applies to number fields only")
            return _BAD
        return FieldRef(other, float(times))

    def scalar(self, v: Any, ftype: str, name: str, path: tuple[str | int, ...]) -> Any:
        ok: bool
        if ftype == "number":
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        elif ftype == "string":
            ok = isinstance(v, str)
        elif ftype == "bool":
            ok = isinstance(v, bool)
        elif ftype == "datetime":
            if isinstance(v, (date, datetime)):
                return pd.Timestamp(v)
            if isinstance(v, str):
                try:
                    return pd.Timestamp(v)
                except ValueError:
                    pass
            ok = False
        else:
            ok = True
        if not ok:
            self.fail(path, f"{name!r} is a {ftype} field; {v!r} is not a {ftype}")
            return _BAD
        return v


_BAD: Any = object()


def compile_condition(node: Any, fields: Mapping[str, str], loc: Locator,
                      path: Sequence[str | int] = ()) -> Condition:
    """Compile ``node`` (found at ``path`` in the document of ``loc``) or raise SpecError."""
    bad_types = {k: v for k, v in fields.items() if v not in TYPES}
    if bad_types:  # a programming error in the caller's field table
        raise ValueError(f"unknown field types: {bad_types}")
    compiler = _Compiler(fields, loc)
    cond = compiler.node(node, tuple(path))
    if compiler.problems or cond is None:
        raise SpecError(compiler.problems)
    return cond


def collect_problems(node: Any, fields: Mapping[str, str], loc: Locator,
                     path: Sequence[str | int] = ()) -> tuple[Condition | None, list[Problem]]:
    """Like compile_condition, but returns the problems so a validator can gather them all."""
    try:
        return compile_condition(node, fields, loc, path), []
    except SpecError as exc:
        return None, exc.problems


def field_types(df: pd.DataFrame) -> dict[str, str]:
    """Condition types of a DataFrame's columns (for attributes not known in advance)."""
    out = {}
    for name, dtype in df.dtypes.items():
        if pd.api.types.is_bool_dtype(dtype):
            out[str(name)] = "bool"
        elif pd.api.types.is_numeric_dtype(dtype):
            out[str(name)] = "number"
        elif pd.api.types.is_datetime64_any_dtype(dtype):
            out[str(name)] = "datetime"
        else:
            out[str(name)] = "string"
    return out


__all__ = [
    "OPERATORS",
    "TYPES",
    "Condition",
    "FieldRef",
    "collect_problems",
    "compile_condition",
    "field_types",
]
