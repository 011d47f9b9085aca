"""Marketers' YAML with positions, so every problem can say file:line:column.

``load_yaml`` keeps ruamel.yaml's round-trip nodes in a ``Locator``; ``Locator.at(path)`` gives
the 1-based line and column of any key path. ``problems_from_pydantic`` turns a pydantic
``ValidationError`` into located ``Problem``s with "did you mean" hints for unknown keys.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from clm_core.errors import Problem, SpecError
from clm_core.suggest import did_you_mean

Path_ = tuple[str | int, ...]


class Locator:
    """Positions of keys and items in one loaded YAML document."""

    def __init__(self, file: str, root: Any):
        self.file = file
        self.root = root

    def at(self, path: Sequence[str | int]) -> tuple[int | None, int | None]:
        """1-based (line, column) of the deepest node of ``path`` that exists."""
        node, pos = self.root, (1, 1)
        for key in path:
            if isinstance(node, CommentedMap) and key in node:
                line, col = node.lc.key(key)
                pos, node = (line + 1, col + 1), node[key]
            elif isinstance(node, CommentedSeq) and isinstance(key, int) and 0 <= key < len(node):
                line, col = node.lc.item(key)
                pos, node = (line + 1, col + 1), node[key]
            else:
                break
        return pos

    def value_at(self, path: Sequence[str | int]) -> tuple[int | None, int | None]:
        """Position of the value (not the key) at ``path`` when it is a mapping entry."""
        *parent, last = path
        node = self.root
        for key in parent:
            try:
                node = node[key]
            except (KeyError, IndexError, TypeError):
                return self.at(path)
        if isinstance(node, CommentedMap) and last in node:
            line, col = node.lc.value(last)
            return line + 1, col + 1
        return self.at(path)

    def problem(self, path: Sequence[str | int], message: str, severity: str = "error") -> Problem:
        line, col = self.at(path)
        return Problem(self.file, line, col, message, severity)


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            str(k) if not isinstance(k, (int, float, bool)) else k: _plain(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


_CLOSERS = {"flow mapping": "'}'", "flow sequence": "']'", "quoted scalar": "closing quote"}


def _syntax_problem(exc: MarkedYAMLError, file: str) -> Problem:
    """Located where the parser noticed, naming where the construct began: an unclosed bracket
    is only noticed lines later, at the next thing that cannot be inside it."""
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
    what = exc.problem or exc.context or "invalid YAML"
    start = exc.context_mark
    if exc.problem and exc.context and start is not None:
        what += f"; {exc.context} that started at line {start.line + 1}, column {start.column + 1}"
        closer = next((c for kind, c in _CLOSERS.items() if kind in exc.context), None)
        if closer and (start.line, start.column) != (mark.line, mark.column):  # type: ignore[union-attr]
            what += f" (is its {closer} missing?)"
    return Problem(file, line, col, f"YAML syntax: {what}")


def parse_yaml(text: str, file: str) -> tuple[Any, Locator]:
    """Plain Python data and its Locator; a syntax error raises a located SpecError."""
    yaml = YAML(typ="rt")
    try:
        root = yaml.load(text)
    except MarkedYAMLError as exc:
        raise SpecError([_syntax_problem(exc, file)]) from None
    except Exception as exc:  # ruamel raises a few unmarked errors (e.g. bad unicode)
        raise SpecError([Problem(file, None, None, f"YAML: {exc}")]) from None
    return _plain(root), Locator(file, root)


def load_yaml(path: str | Path) -> tuple[Any, Locator]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([Problem(str(p), None, None, f"cannot read: {exc}")]) from None
    return parse_yaml(text, str(p))


def _unwrap(tp: Any) -> list[Any]:
    """The concrete classes inside Optional/Union/Annotated/list/dict annotations."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return [c for a in typing.get_args(tp) for c in _unwrap(a)]
    if origin in (list, tuple, set, frozenset, Sequence):
        return [c for a in typing.get_args(tp) for c in _unwrap(a)]
    if origin is dict:
        args = typing.get_args(tp)
        return _unwrap(args[1]) if len(args) == 2 else []
    return [tp]


def _fields_at(model: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """Field names (aliases) valid at the mapping that holds ``loc[-1]``."""
    candidates: list[Any] = [model]
    for key in loc[:-1]:
        nxt: list[Any] = []
        for cls in candidates:
            if isinstance(key, int):
                nxt.append(cls)
            elif isinstance(cls, type) and issubclass(cls, BaseModel):
                for name, info in cls.model_fields.items():
                    if key in (name, info.alias):
                        nxt.extend(_unwrap(info.annotation))
        candidates = [c for c in nxt if c is not None] or candidates
    names: list[str] = []
    for cls in candidates:
        if isinstance(cls, type) and issubclass(cls, BaseModel):
            names += [info.alias or name for name, info in cls.model_fields.items()]
    return names


def problems_from_pydantic(exc: ValidationError, locator: Locator,
                           model: type[BaseModel] | None = None,
                           prefix: Path_ = ()) -> list[Problem]:
    """Located problems, one per pydantic error, unknown keys with 'did you mean'."""
    problems = []
    for err in exc.errors():
        # Union members and tagged unions add non-data parts (class names, tags) to loc.
        loc = tuple(prefix) + tuple(p for p in err["loc"] if not (isinstance(p, str) and (
            p[:1].isupper() or p.startswith(("function-", "tagged-union")))))
        where = ".".join(str(p) for p in loc) or "document"
        if err["type"] == "extra_forbidden":
            key = str(loc[-1])
            hint = did_you_mean(key, _fields_at(model, loc[len(prefix):])) if model else ""
            message = f"unknown key {key!r}{hint}"
        elif err["type"] == "missing":
            message = f"missing required key {str(loc[-1])!r}"
            loc = loc[:-1]
        else:
            message = f"{where}: {err['msg']}"
            if "input" in err and not isinstance(err["input"], (dict, list)):
                message += f" (got {err['input']!r})"
        line, col = locator.at(loc)
        problems.append(Problem(locator.file, line, col, message))
    return problems
