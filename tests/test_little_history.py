"""A store with little history: stages that need no model from the first order, the model
fields empty until a fit is possible, and a welcome journey that runs on five customers."""

from __future__ import annotations

import shutil
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from clm import cli
from clm_core.db import tables as t
from clm_core.db.engine import make_engine
from clm_core.lifecycle.history import Rhythm, Shortfall, shortfall
from tests.conftest import REPO


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for d in ("journeys", "templates"):
        shutil.copytree(REPO / d, tmp_path / d)
    (tmp_path / "clm.toml").write_text("[clm]\n", encoding="utf-8")  # a project, as clm init makes
    return tmp_path


def clm(db_url: str, project: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--database", db_url, "--project", str(project), *args])


def five_customer_store(db_url: str, project: Path) -> date:
    """Five customers who agreed to email: one prospect, four first orders in the last days.
    Returns the newest order's day. Dates follow today because ``clm plan`` runs now."""
    today = date.today()
    day = [today - timedelta(days=n) for n in (4, 3, 2, 1)]
    (project / "customers.csv").write_text(
        "customer_id,name,email,accepts_email,locale,signup_date\n"
        + "".join(f"s{i},Customer {i},s{i}@example.com,yes,{'zh-CN' if i == 2 else 'en'},"
                  f"{today - timedelta(days=30)}\n" for i in range(1, 6)))
    (project / "orders.csv").write_text(
        "order_id,customer_id,order_date,total\n"
        + "".join(f"o{i},s{i},{day[i - 1]} 10:00,{20 + i}\n" for i in range(1, 5)))
    for kind in ("customers", "orders"):
        done = clm(db_url, project, "import", kind, str(project / f"{kind}.csv"))
        assert done.exit_code == 0, done.output
    return day[-1]


def test_five_customer_store_scores_without_a_model_and_plans_welcome(db_url: str,
                                                                     project: Path) -> None:
    newest = five_customer_store(db_url, project)
    res = clm(db_url, project, "score")
    assert res.exit_code == 0, res.output
    assert f"scored 5 customers as of {newest} with no CLV model yet" in res.output
    assert "4 customers with orders, 0 repeat buyers: not enough to fit the CLV models " \
           "(need 20 and 10; 16 more customers with orders and 10 more repeat buyers to go)" \
           in res.output
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            scores = pd.read_sql(sa.select(t.customer_scores, t.customers.c.external_id)
                                 .join(t.customers), conn).set_index("external_id")
            assert conn.scalar(sa.select(sa.func.count()).select_from(t.model_fits)) == 0
    finally:
        engine.dispose()
    assert scores["stage"].to_dict() == {"s1": "new", "s2": "new", "s3": "new", "s4": "new",
                                         "s5": "prospect"}
    model = ["p_alive", "expected_purchases_30d", "expected_purchases_90d", "clv_12m",
             "expected_aov"]
    assert scores[model].isna().all().all()
    assert scores["fit_id"].isna().all()
    assert (scores.loc["s1", "n_orders"], scores.loc["s1", "total_spend"]) == (1, 21.0)

    plan = project / "plan.csv"
    res = clm(db_url, project, "plan", "--csv", str(plan))
    assert res.exit_code == 0, res.output
    decisions = pd.read_csv(plan)
    welcome = decisions[(decisions["journey"] == "welcome") & (decisions["kind"] == "message")]
    assert sorted(welcome["customer"].unique()) == ["s1", "s2", "s3", "s4"]
    assert set(welcome["status"]) <= {"pending", "deferred", "skipped"}
    assert (welcome["status"] != "skipped").any()

    res = clm(db_url, project, "fit")
    assert res.exit_code == 1
    assert "not enough to fit the CLV models" in res.output and "Traceback" not in res.output


def test_one_time_buyers_go_quiet_by_the_default_rhythm(db_url: str, project: Path) -> None:
    five_customer_store(db_url, project)
    as_of = date.today() + timedelta(days=70)  # 2x the default 30 days of silence, not 4x
    res = clm(db_url, project, "score", "--as-of", as_of.isoformat())
    assert res.exit_code == 0, res.output
    assert _stage_count(res.output, "at_risk") == 4 and _stage_count(res.output, "new") == 0
    res = clm(db_url, project, "score", "--as-of", (as_of + timedelta(days=60)).isoformat())
    assert _stage_count(res.output, "churned") == 4


def _stage_count(output: str, stage: str) -> int:
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == stage:
            return int(parts[1].replace(",", ""))
    raise AssertionError(f"no {stage} line in {output}")


def test_rhythm_is_the_default_until_enough_repeat_buyers() -> None:
    rhythm = Rhythm(default_days=30.0, min_buyers=3)
    span = pd.Series([10.0, 1.0, 0.0, 40.0])
    repeats = pd.Series([1.0, 1.0, 0.0, np.nan])
    assert rhythm.of(span, repeats) == 30.0  # two repeat buyers: too few to trust
    span = pd.Series([10.0, 1.0, 0.0, 40.0, 60.0])
    repeats = pd.Series([1.0, 1.0, 0.0, 2.0, 3.0])
    assert rhythm.of(span, repeats) == 15.0  # median of 10, 1, 20 and 20 days


def test_shortfall_counts_what_a_fit_still_needs() -> None:
    summary = pd.DataFrame({"T": [5.0] * 25 + [np.nan] * 3,
                            "frequency": [1.0] * 8 + [0.0] * 17 + [np.nan] * 3,
                            "monetary_value": [10.0] * 7 + [0.0] * 18 + [np.nan] * 3})
    found = shortfall(summary)
    assert found == Shortfall(customers=25, repeat_buyers=7)  # one repeat buyer spent nothing
    assert (found.more_customers, found.more_repeat_buyers) == (0, 3)
    assert found.message().endswith("(need 20 and 10; 3 more repeat buyers to go)")
    enough = summary.assign(frequency=1.0, monetary_value=10.0)
    assert shortfall(enough) is None
