"""Reading store exports: the fast C-parser path agrees with Python's csv module."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from clm_core.ingest.csvfile import _header_end, _split_exact, _split_fast, read_table
from clm_core.ingest.fields import CUSTOMERS

UNQUOTED = [
    "a,b,c\n1,2,3\n4,5\n\n6,7,8,9\n x , y ,z\n\n",
    "a,b,c\r\n1,2,3\r\n  \r\n4,5,6",
    "a\n1\n\n2\n",
    "a,b\n",
    "a,b\n1,\n,2\n中文,二\n",
]


def _cells(frame: pd.DataFrame) -> list[list[object]]:
    return frame.astype(object).where(frame.notna(), None).values.tolist()


@pytest.mark.parametrize("text", UNQUOTED)
def test_fast_split_matches_the_csv_module(text: str) -> None:
    at = _header_end(text)
    width = len(text[:at].strip().split(","))
    fast = _split_fast(text, at, ",", width)
    exact = _split_exact(text, at, ",", width, Path("x.csv"))
    assert fast is not None
    assert _cells(fast[0]) == _cells(exact[0])
    assert fast[1].tolist() == exact[1].tolist()  # row numbers
    assert fast[2] == exact[2]  # malformed rows with their reasons


@pytest.mark.parametrize("text", ['a,b\n"x, y",2\n', "a,b\r1,2\r"])
def test_quotes_and_bare_carriage_returns_take_the_exact_path(text: str) -> None:
    assert _split_fast(text, _header_end(text), ",", 2) is None


def test_quoted_fields_rows_and_white_space(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text('customer_id,name,notes\n'
                    'q1,"Lee, Ann","line one\nline two"\n'
                    'q2,\u3000王伟\u3000, spaced \n'
                    'q3,too,many,fields\n', encoding="utf-8")
    raw = read_table(path, CUSTOMERS)
    assert raw.frame["name"].tolist() == ["Lee, Ann", "王伟"]
    assert raw.extra["notes"].tolist() == ["line one\nline two", "spaced"]
    assert raw.rows.tolist() == [2, 3]  # records, as a spreadsheet numbers them
    assert [(m.row, m.reason, m.cells) for m in raw.malformed] == [
        (4, "expected 3 fields, found 4", ("q3", "too", "many,fields"))]


@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_delimiter_is_detected(tmp_path: Path, sep: str) -> None:
    path = tmp_path / "c.csv"
    path.write_text(sep.join(["customer_id", "email"]) + "\n" + sep.join(["d1", "d@x.io"]) + "\n")
    raw = read_table(path, CUSTOMERS)
    assert raw.frame.to_dict("list") == {"external_id": ["d1"], "email": ["d@x.io"]}
