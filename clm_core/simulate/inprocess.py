"""The lifecycle step in process, without Prefect: the functions the ``lifecycle`` flow's tasks
call, in the flow's order (score, journeys, dispatch). For benchmarks that run a hundred
simulated stores, where a flow run per simulated day would cost more than the day itself."""

from __future__ import annotations

import asyncio
from datetime import date, datetime

from sqlalchemy.engine import Engine

from clm_core.delivery.config import load_delivery_config
from clm_core.delivery.dispatcher import Dispatcher
from clm_core.journeys.run import evaluate
from clm_core.lifecycle.pipeline import LifecycleConfig, score
from clm_core.settings import Settings
from clm_core.simulate.store import Step


def lifecycle_step(engine: Engine, settings: Settings, signing_key: bytes,
                   fit_max_age_days: float | None = None) -> Step:
    """``step(as_of, now)``: score as of the day, plan the journeys at ``now``, send what is due
    at ``now`` (the simulated clock throughout)."""
    config = LifecycleConfig.from_settings(settings)
    delivery = load_delivery_config(settings)

    def step(as_of: date, now: datetime) -> None:
        score(engine, config, as_of=as_of, max_fit_age_days=fit_max_age_days)
        evaluate(engine, settings, now=now)
        asyncio.run(Dispatcher(engine, settings, delivery, signing_key=signing_key,
                               clock=lambda: now, owner="simulate").run())

    return step
