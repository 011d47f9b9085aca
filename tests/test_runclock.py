"""The run's one clock: every entry point normalises ``now`` alike and says why it chose the
as-of day and the time it runs with."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from click.testing import CliRunner

from clm import cli
from clm_core.errors import ClmError
from clm_core.runclock import normalize_as_of, normalize_now, resolve

UTC_10 = datetime(1997, 4, 1, 10, 0)


@pytest.mark.parametrize("value", [
    UTC_10,
    datetime(1997, 4, 1, 10, 0, tzinfo=UTC),
    datetime(1997, 4, 1, 18, 0, tzinfo=ZoneInfo("Asia/Shanghai")),  # as the Prefect UI sends it
    datetime(1997, 4, 1, 5, 0, tzinfo=timezone(timedelta(hours=-5))),
    pd.Timestamp("1997-04-01T12:00+02:00"),
    "1997-04-01 10:00",
    "1997-04-01T10:00:00Z",
    "1997-04-01T18:00+08:00",
])
def test_every_shape_of_now_becomes_naive_utc(value: object) -> None:
    got = normalize_now(value)  # type: ignore[arg-type]
    assert got == UTC_10 and got.tzinfo is None
    assert min(got, datetime(2000, 1, 1)) == UTC_10  # comparable with the schema's naive UTC


def test_dates_and_bad_times() -> None:
    assert normalize_now(date(1997, 4, 1)) == datetime(1997, 4, 1)
    assert normalize_now(None) is None
    assert normalize_as_of("1997-03-31") == date(1997, 3, 31)
    assert normalize_as_of(datetime(1997, 3, 31, 23, 30, tzinfo=timezone(timedelta(hours=-2)))) \
        == date(1997, 4, 1)  # by its UTC day
    with pytest.raises(ClmError, match="not a time"):
        normalize_now("next tuesday")


def newest() -> date:
    return date(1998, 6, 30)


def wall() -> datetime:
    return datetime(2026, 11, 29, 20, 0)


def test_resolve_says_why() -> None:
    c = resolve(None, None, newest, wall)
    assert (c.as_of, c.now) == (date(1998, 6, 30), wall())
    assert c.describe()[:2] == ["as of 1998-06-30: the newest order's day",
                                "now 2026-11-29 20:00:00 UTC: the wall clock"]
    assert "enter nobody" in c.describe()[2]  # stage changes of 1998 are too old for journeys
    c = resolve(date(1997, 3, 31), None, newest, wall)
    assert (c.as_of, c.now, c.now_reason) == (date(1997, 3, 31), datetime(1997, 4, 1),
                                              "the end of the as-of day")
    assert len(c.describe()) == 2
    c = resolve(date(2026, 11, 29), None, newest, wall)  # today: the day is not over
    assert c.now == wall() and "not over" in c.now_reason
    c = resolve(None, "1997-04-01T18:00+08:00", newest, wall)  # no look-ahead past now's day
    assert (c.as_of, c.now) == (date(1997, 4, 1), UTC_10)
    assert c.as_of_reason == "the day of now (orders go on to 1998-06-30)"
    c = resolve("1997-03-31", UTC_10, newest, wall)
    assert (c.as_of_reason, c.now_reason) == ("given", "given")
    with pytest.raises(ClmError, match="before the as-of day"):
        resolve(date(1997, 4, 2), UTC_10, newest, wall)


def test_plan_reads_an_aware_time_as_utc(settings: object, db_url: str) -> None:
    """``clm plan --at`` goes through the same normalisation as the flows."""
    from tests.conftest import REPO

    out = CliRunner().invoke(cli, ["--database", db_url, "--project", str(REPO), "plan",
                                   "--at", "1997-04-01T18:00+08:00"])
    assert out.exit_code == 0, out.output
    bad = CliRunner().invoke(cli, ["--database", db_url, "--project", str(REPO), "plan",
                                   "--at", "soon"])
    assert bad.exit_code == 2 and "not a time" in bad.output
