"""A simulated clock: its steps, and runs that continue it; the demo's figures."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pytest
import sqlalchemy as sa

from clm_core.db import tables as t
from clm_core.journeys.outcomes import newcombe, reason_words, wilson
from clm_core.simclock import choose, simulated_steps


def test_simulated_steps_run_the_next_morning_in_the_store_time_zone() -> None:
    steps = simulated_steps(date(1997, 3, 31), 3, timedelta(days=7), 10, "Asia/Shanghai")
    assert steps == [(date(1997, 3, 31), datetime(1997, 4, 1, 2, 0)),
                     (date(1997, 4, 7), datetime(1997, 4, 8, 2, 0)),
                     (date(1997, 4, 14), datetime(1997, 4, 15, 2, 0))]
    # New York on daylight saving time in April: 10:00 EDT is 14:00 UTC; in March EST, 15:00.
    ny = simulated_steps(date(1997, 3, 1), 6, timedelta(days=7), 10, "America/New_York")
    assert ny[0][1] == datetime(1997, 3, 2, 15, 0) and ny[-1][1] == datetime(1997, 4, 6, 14, 0)


def _order(conn: sa.Connection, day: str) -> None:
    c = conn.execute(sa.insert(t.customers).values(external_id=f"c-{day}")).inserted_primary_key[0]
    conn.execute(sa.insert(t.orders).values(external_id=f"o-{day}", customer_id=c, amount=10,
                                            ordered_at=datetime.fromisoformat(day)))


def _lifecycle_run(conn: sa.Connection, run_id: str, started: datetime,
                   summary: dict[str, object]) -> None:
    conn.execute(sa.insert(t.runs).values(id=run_id, kind="lifecycle", started_at=started,
                                          finished_at=started + timedelta(seconds=5),
                                          status="completed", summary=summary))


def test_a_live_store_resolves_the_clock_as_every_entry_point_does(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        _order(conn, "2026-11-20 15:00")
    clock, simulated = choose(engine, None, None)
    assert clock.as_of == date(2026, 11, 20) and not simulated
    assert "the newest order's day" in clock.as_of_reason and "the wall clock" in clock.now_reason
    given, simulated = choose(engine, date(2026, 11, 1), datetime(2026, 11, 2, 9, 0))
    assert (given.as_of, given.now, given.as_of_reason, simulated) == \
        (date(2026, 11, 1), datetime(2026, 11, 2, 9, 0), "given", False)


def test_after_a_simulation_the_next_run_continues_its_clock(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        _order(conn, "1998-06-30 12:00")
        _lifecycle_run(conn, "a", datetime(2026, 11, 29, 10, 0),
                       {"as_of": "1997-04-07", "now": "1997-04-08T10:00:00", "simulated": True})
    clock, simulated = choose(engine, None, None)
    assert (clock.as_of, clock.now, simulated) == (
        date(1997, 4, 8),
        datetime(1997, 4, 9, 10, 0),
        True,
    )
    why = ("the next day on the simulated clock of the last run (as of 1997-04-07, now "
           "1997-04-08 10:00); --as-of and --now to choose")
    assert clock.describe() == [f"as of 1997-04-08: {why}", f"now 1997-04-09 10:00:00 UTC: {why}"]
    given, simulated = choose(engine, None, datetime(1997, 4, 20, 8, 0))
    assert (given.as_of, given.now, given.now_reason, simulated) == \
        (date(1997, 4, 8), datetime(1997, 4, 20, 8, 0), "given", True)
    # A later live run ends the simulation: the store is back on the wall clock.
    with engine.begin() as conn:
        _lifecycle_run(conn, "b", datetime(2026, 11, 29, 11, 0),
                       {"as_of": "1998-06-30", "now": "2026-11-29T11:00:00"})
    assert choose(engine, None, None)[1] is False


def test_conversion_intervals_match_published_values() -> None:
    # Newcombe (1998), Statistics in Medicine 17:873, table II, method 10.
    assert newcombe(56, 70, 48, 80) == pytest.approx((0.0524, 0.3339), abs=5e-5)
    assert newcombe(9, 10, 3, 10) == pytest.approx((0.1705, 0.8090), abs=5e-5)
    # Wilson score interval; no conversions still has an upper bound.
    assert wilson(0, 41) == pytest.approx((0.0, 0.0857), abs=5e-5)
    assert wilson(56, 70) == pytest.approx((0.6918, 0.8770), abs=5e-5)
    assert wilson(0, 0) == (0.0, 1.0)


def test_reasons_read_as_words() -> None:
    assert reason_words("quiet_hours").startswith("wait for the customer's daytime")
    assert reason_words("frequency_cap:email/any/2per7d").startswith("wait: the customer already")
    assert reason_words("no_consent") == "without consent for the channel"
