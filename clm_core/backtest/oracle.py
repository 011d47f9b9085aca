"""The naive replay: the real pipeline through a database, step by step, on a copy.

Each step runs ``lifecycle.pipeline.score`` and ``journeys.run.evaluate`` against a scratch
database holding a copy of the store's customers and orders (and nothing the replay produces:
no scores, fits, enrollments or messages), then marks every message the plan let through as
sent at its scheduled time. It is what the scheduled flow does, minus the providers, and costs
a full recompute per simulated day. ``clm_core.backtest.replay`` must give the same figures;
the benchmark (``benchmarks/bench_backtest.py``) and the tests compare the two.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import date, datetime

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from clm_core.backtest.replay import Step, coupon_costs
from clm_core.db import tables as t
from clm_core.db.bulk import write_frame
from clm_core.errors import ModelFitError
from clm_core.journeys.engine import Plan
from clm_core.journeys.run import evaluate
from clm_core.journeys.store import read_frame
from clm_core.lifecycle.pipeline import LifecycleConfig, score
from clm_core.settings import Settings

# What the copy keeps: the store's own data. Everything else is what a run produces.
STORE_TABLES = ("customers", "orders", "order_items", "events", "suppressions", "consent_ledger")


def copy_store(source: Engine, target: Engine) -> None:
    """Copy the store tables from ``source`` into the empty schema of ``target``."""
    with source.connect() as src, target.begin() as dst:
        for name in STORE_TABLES:
            table = t.metadata.tables[name]
            frame = read_frame(src, sa.select(table))
            if len(frame):
                write_frame(dst, table, frame, bulk=True)


def _step_rows(engine: Engine, as_of: date, now: datetime) -> tuple[Plan, pd.DataFrame]:
    e, m = t.journey_enrollments, t.messages
    with engine.connect() as conn:
        entered = read_frame(conn, sa.select(e.c.journey, e.c.customer_id, e.c.is_control)
                             .where(e.c.entered_at == now))
        changed = read_frame(conn, sa.select(e.c.journey, e.c.customer_id, e.c.is_control,
                                             e.c.status, e.c.converted_at, e.c.exited_at)
                             .where(e.c.status == "converted", e.c.exited_at == now))
        msgs = read_frame(conn, sa.select(m.c.journey, m.c.customer_id, m.c.channel, m.c.status,
                                          m.c.reason, m.c.coupon, m.c.send_after)
                          .where(m.c.created_at == now))
        s = t.customer_scores
        view = read_frame(conn, sa.select(s.c.customer_id, s.c.expected_aov,
                                          s.c.avg_order_value))
        moves = read_frame(conn, sa.select(t.stage_transitions)
                           .where(t.stage_transitions.c.as_of == pd.Timestamp(as_of)))
    for col in ("expected_aov", "avg_order_value"):
        view[col] = pd.to_numeric(view[col]).astype(float)
    entered["is_control"] = entered["is_control"].astype(bool)
    changed["exited_at"] = pd.to_datetime(changed["exited_at"])
    changed["is_control"] = changed["is_control"].astype(bool)
    msgs["nominal_cost"] = coupon_costs(msgs, view)
    return Plan(pd.Timestamp(now), changed, msgs, entered), moves


def replay_through_database(engine: Engine, settings: Settings,
                            steps: Sequence[tuple[date, datetime]]) -> Iterator[Step]:
    """Run the pipeline on ``engine`` (a copy) at each step; yield what each step did."""
    config = LifecycleConfig.from_settings(settings)
    rules = config.load_rules()
    for as_of, now in steps:
        try:
            report = score(engine, config, as_of, rules)
        except ModelFitError as exc:
            yield Step(as_of, now, 0, False, str(exc), 0, pd.DataFrame(), None)
            continue
        evaluate(engine, settings, now)
        plan, moves = _step_rows(engine, as_of, now)
        with engine.begin() as conn:
            m = t.messages
            conn.execute(m.update().where(m.c.status.in_(("pending", "deferred")))
                         .values(status="sent", sent_at=m.c.send_after))
        yield Step(as_of, now, 0, report.fitted, None, report.customers, moves, plan)
