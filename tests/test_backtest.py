"""``clm backtest``: the in-memory replay gives what the real pipeline gives through a database,
looks nothing ahead, changes no live row and repeats itself exactly."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from clm import cli
from clm_core.backtest.aggregates import RunningAggregates
from clm_core.backtest.history import History, load_history
from clm_core.backtest.oracle import copy_store, replay_through_database
from clm_core.backtest.replay import steps_between
from clm_core.backtest.run import Period, backtest, select_journeys
from clm_core.backtest.tally import tally, week_of
from clm_core.db import tables as t
from clm_core.db.migrate import open_database
from clm_core.ingest.cdnow import import_cdnow
from clm_core.lifecycle.features import customer_features, day_end, features_from_aggregates
from clm_core.settings import Settings
from tests.conftest import REPO

START = date(1997, 1, 1)


def _project(tmp_path: Path) -> Path:
    for d in ("journeys", "templates"):
        shutil.copytree(REPO / d, tmp_path / d)
    (tmp_path / "clm.toml").write_text("[clm]\n")
    return tmp_path


def _clm(project: Path, db_url: str, *args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, ["--database", db_url, "--project", str(project), *args])
    return r.exit_code, r.output


def _fingerprint(engine: sa.Engine) -> dict[str, str]:
    """A hash of every row of every table (ordered by primary key)."""
    out = {}
    with engine.connect() as conn:
        for table in t.metadata.sorted_tables:
            rows = conn.execute(sa.select(table).order_by(*table.primary_key.columns)).all()
            out[table.name] = hashlib.sha256(repr(rows).encode()).hexdigest()
    return out


def test_running_aggregates_give_the_sql_features(engine: sa.Engine) -> None:
    import_cdnow(engine, sample=True)
    with engine.begin() as conn:  # cancellations and several orders on one day
        o = t.orders
        ids = [r[0] for r in conn.execute(sa.select(o.c.id).order_by(o.c.id).limit(400))]
        conn.execute(o.update().where(o.c.id.in_(ids[::7])).values(status="cancelled"))
        conn.execute(o.update().where(o.c.id.in_(ids[1::11])).values(status="refunded"))
    with engine.connect() as conn:
        history = load_history(conn)
    agg = RunningAggregates(history)
    n = len(history.customers)
    stage = np.full(n, None, dtype=object)
    since = np.full(n, np.datetime64("NaT", "ns"))
    for as_of in (date(1997, 1, 3), date(1997, 2, 10), date(1997, 9, 30), date(1998, 6, 30)):
        agg.advance(np.datetime64(day_end(as_of), "ns"))
        mine = features_from_aggregates(agg.frame(np.datetime64(day_end(as_of), "ns"), stage,
                                                  since, False), as_of, "week").frame
        with engine.connect() as conn:
            # The history path: the statuses above were changed by SQL, behind the purchase
            # aggregates' back (docs/operations.md).
            theirs = customer_features(conn, as_of, "week", source="orders").frame
        cols = ["customer_id", "n_orders", "purchase_days", "first_order_at", "last_order_at",
                "total_spend", "frequency", "recency", "T", "monetary_value", "typical_gap_days"]
        mine, theirs = (f[cols].reset_index(drop=True).astype(
            {"first_order_at": "datetime64[ns]", "last_order_at": "datetime64[ns]"})
            for f in (mine, theirs))
        pd.testing.assert_frame_equal(mine, theirs, check_dtype=False, rtol=1e-9)


def test_replay_gives_what_the_pipeline_gives_through_a_database(
        engine: sa.Engine, settings: Settings, tmp_path: Path) -> None:
    """The oracle: the real score + evaluate on a copy, step by step, against the replay."""
    import_cdnow(engine, sample=True)
    period = Period(START, START + timedelta(weeks=9), timedelta(weeks=1))
    journeys = select_journeys(settings, None)
    replay = backtest(engine, settings, period, journeys).tally
    url = f"sqlite:///{tmp_path / 'copy.db'}"
    copy = open_database(url)
    copy_store(engine, copy)
    steps = steps_between(period.start, period.end, period.every, period.hour,
                          settings.default_timezone)
    naive = tally(replay_through_database(copy, settings.with_database(url), steps))
    mine, theirs = replay.weekly(), naive.weekly()
    assert mine["entered"].sum() > 100 and mine["email"].sum() > 100
    assert (mine["converted"].sum() + mine["converted_holdout"].sum()) > 0
    pd.testing.assert_frame_equal(mine, theirs)
    assert replay.failed == naive.failed


def test_backtest_changes_no_live_row_repeats_itself_and_looks_nothing_ahead(
        engine: sa.Engine, db_url: str, tmp_path: Path) -> None:
    import_cdnow(engine, sample=True)
    project = _project(tmp_path)
    before = _fingerprint(engine)
    args = ["backtest", "--from", "1997-01-06", "--every", "1w", "--json"]
    code, out = _clm(project, db_url, *args, "--to", "1997-03-03")
    assert code == 0, out
    code2, out2 = _clm(project, db_url, *args, "--to", "1997-03-03")
    assert _fingerprint(engine) == before  # the live tables are only read
    first, second = (json.loads(o[:o.rindex("}") + 1]) for o in (out, out2))
    assert first == second  # identical output, run after run
    assert sum(r["entered"] for r in first["weeks"]) > 0
    # Stopped at D or run to D + 90 days: every figure up to D agrees.
    code, longer = _clm(project, db_url, *args, "--to", "1997-06-01")
    assert code == 0, longer
    later = json.loads(longer[:longer.rindex("}") + 1])
    cut = week_of(date(1997, 3, 3)).isoformat()
    assert [r for r in later["weeks"] if r["week"] <= cut] == first["weeks"]
    assert [f for f in later["failed_days"] if f["as_of"] <= "1997-03-03"] == first["failed_days"]
    assert len(later["weeks"]) > len(first["weeks"])


def test_compare_a_journey_file_and_write_a_safe_csv(engine: sa.Engine, db_url: str,
                                                     tmp_path: Path) -> None:
    import_cdnow(engine, sample=True)
    project = _project(tmp_path / "p")
    other = tmp_path / "welcome_b.yaml"
    text = (project / "journeys" / "welcome.yaml").read_text()
    assert "holdout" not in text.split("steps:")[0]
    other.write_text(text.replace("steps:", "holdout: {percent: 50}\nsteps:", 1))
    out_csv = tmp_path / "weeks.csv"
    code, out = _clm(project, db_url, "backtest", "--from", "1997-01-06", "--to", "1997-02-10",
                     "--every", "1w", "--journeys", "welcome", "--compare", str(other),
                     "--out", str(out_csv))
    assert code == 0, out
    assert "compare: project journeys (A)" in out and "holdout" in out
    weeks = pd.read_csv(out_csv)
    a, b = weeks[weeks["version"] == "A"], weeks[weeks["version"] == "B"]
    assert set(a["journey"]) == {"welcome"}
    assert a["holdout"].sum() == 0 < b["holdout"].sum()
    assert a["entered"].sum() == b["entered"].sum()  # the same customers enter either way


@pytest.mark.parametrize("args, says", [
    (["--every", "fortnightly"], "--every 'fortnightly'"),
    (["--journeys", "nope"], "no journey named nope"),
    (["--from", "1997-03-01", "--to", "1997-01-01"], "before --from"),
])
def test_bad_input_is_one_clear_line(engine: sa.Engine, db_url: str, tmp_path: Path,
                                     args: list[str], says: str) -> None:
    import_cdnow(engine, sample=True)
    code, out = _clm(_project(tmp_path), db_url, "backtest", *args)
    assert code != 0 and says in out and "Traceback" not in out


def test_tally_counts_customers_entering_several_journeys_in_a_week() -> None:
    from datetime import datetime

    from clm_core.backtest.replay import Step
    from clm_core.journeys.engine import Plan, empty_enrollments

    def step(day: date, entered: list[tuple[str, int]]) -> Step:
        now = pd.Timestamp(datetime.combine(day + timedelta(days=1), datetime.min.time()))
        frame = pd.DataFrame(entered, columns=["journey", "customer_id"]).assign(is_control=False)
        msgs = pd.DataFrame(columns=["journey", "customer_id", "channel", "status", "reason",
                                     "coupon"])
        return Step(day, now.to_pydatetime(), 0, False, None, 3, pd.DataFrame(),
                    Plan(now, empty_enrollments().assign(exited_at=pd.NaT), msgs, frame))

    t = tally([step(date(2026, 1, 5), [("a", 1), ("a", 2)]),
               step(date(2026, 1, 7), [("b", 1), ("b", 3)]),  # same week: customer 1 twice
               step(date(2026, 1, 12), [("a", 3)])])          # next week: customer 3 once
    weekly = t.weekly().set_index(["journey", "week"])
    assert weekly.loc[("a", date(2026, 1, 5)), "multi_journey"] == 1
    assert weekly.loc[("b", date(2026, 1, 5)), "multi_journey"] == 1
    assert weekly.loc[("a", date(2026, 1, 12)), "multi_journey"] == 0
    several = t.customers_in_several()
    assert several.to_dict("records") == [{"week": date(2026, 1, 5), "customers": 1}]
    assert t.totals().set_index("journey")["entered"].to_dict() == {"a": 3, "b": 2}


def _replay_with(engine: sa.Engine, settings: Settings, ahead: str) -> tuple[Any, list[Any]]:
    """A 12-week replay of the CDNOW sample: scored inline (``"no"``), a few steps ahead in
    the second process (``"yes"``), ahead but for the wrong days (``"wrong"``: the replay must
    notice and score inline), or ahead by a process that ends after five steps (``"ends"``:
    the replay must rebuild the scoring state and go on inline)."""
    from clm_core.backtest.ahead import ScoringAhead
    from clm_core.backtest.replay import Replay
    from clm_core.journeys.store import project_policy
    from clm_core.lifecycle.pipeline import LifecycleConfig

    config = LifecycleConfig.from_settings(settings)
    with engine.connect() as conn:
        history = load_history(conn)
    replay = Replay(history, config, config.load_rules(), select_journeys(settings, None),
                    project_policy(settings.section("journeys")), settings.default_timezone,
                    scoring_ahead=False)
    steps = steps_between(START, START + timedelta(weeks=11), timedelta(weeks=1), 10,
                          settings.default_timezone)
    second = None
    if ahead != "no":
        given = {"yes": steps, "wrong": steps[1:], "ends": steps[:5]}[ahead]
        second = replay.ahead = ScoringAhead(replay.scoring, given)
    done = list(replay.run(steps))
    # the second process was really used, and really given up where it had to be
    assert (second is None or second.failed is None) == (ahead in ("no", "yes")), ahead
    assert replay.scoring.started == (ahead != "yes"), ahead
    fits = [(s.as_of, s.fitted) for s in done]
    models = [replace(m, seconds=0.0) for m in (replay.purchases, replay.spend) if m]
    return tally(done), [fits, *models]


def test_scoring_ahead_changes_nothing(engine: sa.Engine, settings: Settings) -> None:
    import_cdnow(engine, sample=True)
    inline, inline_fits = _replay_with(engine, settings, "no")
    assert sum(f for _, f in inline_fits[0]) >= 3  # several weekly refits in 12 weeks
    for how in ("yes", "wrong", "ends"):
        got, fits = _replay_with(engine, settings, how)
        assert fits == inline_fits, how  # the same days refitted, the same parameters
        pd.testing.assert_frame_equal(got.weekly(), inline.weekly())
    assert len(inline_fits) == 3  # both models were compared


def test_suppression_as_it_stood_at_each_moment() -> None:
    """An address counts as suppressed from its first suppression on (the earliest of
    several), per channel, never before; a customer without the address never is."""
    at = pd.Timestamp
    customers = pd.DataFrame({"email": ["a@x", "b@x", None, "d@x"],
                              "phone": ["+1", None, "+3", "+1"]},
                             index=pd.Index([10, 11, 12, 13], name="customer_id"))
    sup = pd.DataFrame({"channel": ["email", "email", "sms", "email", "sms"],
                        "address": ["b@x", "b@x", "+1", "zz@x", "b@x"],
                        "created_at": [at("2026-03-05"), at("2026-03-01"), at("2026-03-10"),
                                       at("2026-01-01"), at("2026-01-01")]})
    none = np.zeros(0)
    h = History(customers, none.astype(np.int64), none.astype("datetime64[ns]"), none,
                pd.DataFrame(), sup.astype({"created_at": "datetime64[ns]"}), pd.DataFrame())
    for when, email, sms in (("2026-02-28", [], []), ("2026-03-01", [11], []),
                             ("2026-03-09", [11], []), ("2026-03-10", [11], [10, 13])):
        got = h.suppressed_at(at(when))
        assert list(got.index[got["suppressed_email"]]) == email, when
        assert list(got.index[got["suppressed_sms"]]) == sms, when
