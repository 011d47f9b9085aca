"""Scoring in customer-id chunks gives exactly what one pass over every customer gives."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from clm_core.db import tables as t
from clm_core.ingest.cdnow import import_cdnow
from clm_core.lifecycle.pipeline import LifecycleConfig, customer_ranges, population, score

REPO = Path(__file__).resolve().parent.parent
CONFIG = LifecycleConfig(rules=REPO / "journeys" / "lifecycle.yaml")


def stored(engine: sa.Engine) -> tuple[pd.DataFrame, pd.DataFrame]:
    with engine.connect() as conn:
        scores = pd.read_sql(
            sa.select(t.customer_scores).order_by(t.customer_scores.c.customer_id), conn
        )
        moves = pd.read_sql(
            sa.select(
                t.stage_transitions.c.customer_id,
                t.stage_transitions.c.from_stage,
                t.stage_transitions.c.to_stage,
            ).order_by(t.stage_transitions.c.customer_id),
            conn,
        )
    return scores.drop(columns=["recorded_at", "run_id"]), moves


def test_chunks_score_like_one_pass(engine: sa.Engine) -> None:
    import_cdnow(engine, sample=True, prospects=30)
    for as_of in (date(1997, 3, 31), date(1997, 9, 30)):  # the second run records transitions too
        score(engine, CONFIG, as_of=as_of)
    whole = stored(engine)
    with engine.begin() as conn:  # the same two days again, the second one in chunks
        conn.execute(sa.delete(t.stage_transitions))
        conn.execute(sa.delete(t.customer_scores))
    score(engine, CONFIG, as_of=date(1997, 3, 31))
    shared = population(engine, CONFIG, date(1997, 9, 30))
    ranges = customer_ranges(engine, 3)
    assert len(ranges) == 3 and ranges[0][0] == 1 and not shared.fitted
    reports = [score(engine, CONFIG, ids=ids, shared=shared) for ids in ranges]
    chunked = stored(engine)
    assert sum(r.customers for r in reports) == len(whole[0]) > 2300
    assert sum(r.transitions for r in reports) > 0
    pd.testing.assert_frame_equal(whole[0], chunked[0])
    pd.testing.assert_frame_equal(whole[1], chunked[1])
