"""'Did you mean' hints for misspelled names, shared by every validator."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(word: str, choices: Iterable[str], n: int = 1) -> list[str]:
    return difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the nearest choice, or '' when nothing is near."""
    match = closest(word, choices)
    return f" (did you mean {match[0]!r}?)" if match else ""
