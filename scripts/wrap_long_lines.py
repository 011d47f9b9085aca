"""Wrap only the statements that are longer than the declared line length.

``ruff format`` on whole files would restyle everything; this formats just the statement on
each line ``ruff check --select E501`` reports (``ruff format --range``), bottom up so earlier
line numbers stay valid. Long strings and comments are left for a person to split. Run from the
repository root: ``.venv/bin/python scripts/wrap_long_lines.py``.
"""

from __future__ import annotations

import collections
import json
import subprocess

RUFF = ".venv/bin/ruff"


def main() -> None:
    out = subprocess.run([RUFF, "check", ".", "--select", "E501", "--output-format", "json"],
                         capture_output=True, text=True).stdout
    rows: dict[str, set[int]] = collections.defaultdict(set)
    for finding in json.loads(out or "[]"):
        rows[finding["filename"]].add(finding["location"]["row"])
    for path, lines in rows.items():
        for row in sorted(lines, reverse=True):
            subprocess.run([RUFF, "format", "--range", f"{row}:1-{row + 1}:1", path],
                           capture_output=True)
    left = subprocess.run([RUFF, "check", ".", "--select", "E501", "--output-format", "concise"],
                          capture_output=True, text=True).stdout
    print(left or "no line is too long")


if __name__ == "__main__":
    main()
