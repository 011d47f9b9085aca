"""Column checks: dates and time zones, emails, phones, locales, amounts, yes/no values."""

from __future__ import annotations

import pandas as pd
import pytest

from clm_core.ingest.fields import Field
from clm_core.ingest.validate import _by_distinct, _email, _emails, check_column, parse_datetimes

T = pd.Timestamp


def _one(value: str, tz: str = "UTC") -> tuple[object, object]:
    clean, reason = parse_datetimes(pd.Series([value], dtype=object), tz)
    return clean.iloc[0], reason.iloc[0]


@pytest.mark.parametrize(("text", "tz", "expect"), [
    ("2024-01-05", "UTC", T("2024-01-05")),
    ("2024-01-05 10:30", "Asia/Shanghai", T("2024-01-05 02:30")),
    ("2024-01-05T10:30:00Z", "Asia/Shanghai", T("2024-01-05 10:30")),
    ("2024-01-05T10:30:00+08:00", "America/New_York", T("2024-01-05 02:30")),
    ("2024-01-05T10:30:00+0530", "UTC", T("2024-01-05 05:00")),
    ("2024-01-05 10:30 UTC", "America/New_York", T("2024-01-05 10:30")),
    ("2024/01/05 10:30", "UTC", T("2024-01-05 10:30")),
    ("1/5/2024 3:04 PM", "UTC", T("2024-01-05 15:04")),  # month first
    ("20240105", "Asia/Shanghai", T("2024-01-04 16:00")),
    ("2024年1月5日", "UTC", T("2024-01-05")),
    ("2024年1月5日 10时30分", "Asia/Shanghai", T("2024-01-05 02:30")),
    ("2024-01-05 10:30:00.123456", "UTC", T("2024-01-05 10:30:00.123456")),
    ("2024-03-10 02:30", "America/New_York", T("2024-03-10 07:00")),  # skipped hour: forward
])
def test_times_are_parsed_to_naive_utc(text: str, tz: str, expect: pd.Timestamp) -> None:
    clean, reason = _one(text, tz)
    assert clean == expect and pd.isna(reason), reason


def test_mixed_naive_and_offset_times_in_one_column() -> None:
    values = pd.Series(["2024-07-01 12:00", "2024-07-01T12:00:00Z", None, "soon"], dtype=object)
    clean, reason = parse_datetimes(values, "Europe/Berlin")
    assert clean.tolist()[:2] == [T("2024-07-01 10:00"), T("2024-07-01 12:00")]
    assert pd.isna(clean.iloc[2]) and pd.isna(reason.iloc[2])  # empty is not an error
    assert reason.iloc[3] == "unparseable date 'soon'"


@pytest.mark.parametrize("text", ["2024-13-01", "yesterday", "2024-02-30"])
def test_impossible_dates_are_rejected(text: str) -> None:
    clean, reason = _one(text)
    assert pd.isna(clean) and reason == f"unparseable date {text!r}"


def test_ambiguous_local_time_is_rejected_with_a_hint() -> None:
    clean, reason = _one("2024-11-03 01:30", "America/New_York")
    assert pd.isna(clean) and "ambiguous local time" in reason and "add a UTC offset" in reason


EMAILS = ["Foo.Bar@Example.COM", "a@b.co", "x..y@a.com", "user@localhost", "user@sub.test",
          "a_b@x.io", "-a@x.io", "a@x-.io", "a@-x.io", "ab@x.io.", ".a@x.io", "a.@x.io",
          "a+tag@gmail.com", "a@x.co.uk", "ü@x.de", "a@xn--bcher-kva.de", "a@b..com",
          "a@1.2.3.4", "A@X.IO", "a@x.invalid", "a@123.com", "@x.io", "a@", "a b@x.io",
          "l" * 65 + "@x.io", "a@" + "d" * 64 + ".com"]


def test_fast_email_check_agrees_with_email_validator() -> None:
    values = pd.Series(EMAILS, dtype=object)
    fast_clean, fast_reason = _emails(values)
    exact_clean, exact_reason = _by_distinct(values, _email)
    for value, fc, fr, ec, er in zip(EMAILS, fast_clean, fast_reason, exact_clean, exact_reason):
        assert (pd.isna(fc), pd.isna(fr)) == (pd.isna(ec), pd.isna(er)), value
        assert pd.isna(fc) or fc == ec, value


def _check(kind: str, values: list[object], **kw: str) -> tuple[list[object], list[object]]:
    clean, reason = check_column(Field("x", kind), pd.Series(values, dtype=object),
                                 region=kw.get("region", "US"), tz="UTC")
    return ([None if pd.isna(v) else v for v in clean],
            [None if pd.isna(r) else r for r in reason])


def test_phones_become_e164_in_the_default_region() -> None:
    clean, reason = _check("phone", ["138 1234 5678", "+1 (202) 555-0143", "12345", None],
                           region="CN")
    assert clean == ["+8613812345678", "+12025550143", None, None]
    assert reason[2].startswith("invalid phone '12345'") and reason[3] is None


def test_locales_are_normalised() -> None:
    clean, reason = _check("locale", ["zh_cn", "EN-us", "zh-hans-cn", "es-419", "english"])
    assert clean == ["zh-CN", "en-US", "zh-Hans-CN", "es-419", None]
    assert reason[4] == "not a locale such as en or zh-CN: 'english'"


def test_amounts() -> None:
    clean, reason = _check("money", ["19.99", "$1,204.50", "¥88", "12元", "-3", "abc", "7.005"])
    assert clean[:4] == [19.99, 1204.5, 88.0, 12.0] and clean[6] == pytest.approx(7.0, abs=0.01)
    assert reason[4] == "must be >= 0, got -3" and reason[5] == "not a number: 'abc'"


def test_yes_no_values() -> None:
    clean, reason = _check("bool", ["yes", "Y", "1", "是", "ja", "no", "0", "否", None, "maybe"])
    assert clean[:9] == [True] * 5 + [False] * 4
    assert reason[9] == "not a yes/no value: 'maybe'"
