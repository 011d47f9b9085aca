"""Cells for files people open in a spreadsheet: customer data is untrusted.

A cell that starts with ``=``, ``+``, ``-`` or ``@`` (or a tab or carriage return) is a formula
to Excel, LibreOffice and Google Sheets, which a crafted name or address can abuse
(``=HYPERLINK(...)``). Such cells get a leading apostrophe, which the spreadsheet shows as text;
``clm import`` removes it again, so a corrected rejects file imports as it was written.
"""

from __future__ import annotations

import pandas as pd

FORMULA_START = r"^[=+\-@\t\r]"


def safe_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text cells cannot start a formula."""
    out = frame.copy()
    for name in out.columns:
        col = out[name]
        if col.dtype == object or pd.api.types.is_string_dtype(col):
            text = col.astype(object)
            risky = text.map(lambda v: isinstance(v, str)).astype(bool)
            risky &= text.where(risky, "").astype(str).str.contains(FORMULA_START, regex=True)
            if risky.any():
                out[name] = text.mask(risky, "'" + text[risky].astype(str))
    return out
