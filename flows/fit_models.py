"""Weekly: refit the CLV models and publish the calibration/holdout check."""

from __future__ import annotations

from datetime import date, timedelta

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run
from prefect.states import Completed, State

from clm_core.db.engine import make_engine
from clm_core.lifecycle.pipeline import latest_order_date
from clm_core.runs import record_run
from flows.common import target
from tasks.lifecycle import fit_models as fit_task


@flow(name="fit_models", log_prints=False)
def fit_models(as_of: date | None = None, holdout_days: int = 90) -> State:
    """Refit on all data up to ``as_of``; first a check fit that holds out the last
    ``holdout_days`` days, published as a table (predicted vs actual repeat purchases)."""
    tgt = target()
    engine = make_engine(tgt.database_url)
    as_of = as_of or latest_order_date(engine)
    with record_run(engine, "fit", flow_run_id=str(flow_run.id or "") or None) as run:
        check = None
        if holdout_days:
            check = fit_task.with_options(name="fit-models-check")(
                tgt, as_of=as_of - timedelta(days=holdout_days), holdout_end=as_of, run_id=run.id)
            create_table_artifact(
                check.get("holdout", []),
                key="clm-model-check",
                description=f"Calibration to {as_of - timedelta(days=holdout_days)}, "
                f"holdout to {as_of}: predicted vs actual repeat purchases",
            )
        final = fit_task(tgt, as_of=as_of, run_id=run.id)
        params = ", ".join(f"{k}={v:.4g}" for k, v in final["params"].items())
        create_markdown_artifact(
            f"# CLV models as of {as_of}\n\n{final['model']} + Gamma-Gamma ({final['time_unit']}s): "  # noqa: E501  (prose or a URL: clearer whole)
            f"{params}\n\nlog-likelihood: {final['log_likelihood']}\n",
            key="clm-models",
        )
        run.summary = {"params": final["params"], "check": bool(check)}
    engine.dispose()
    return Completed(message=f"fitted {final['model']}: {params}")
