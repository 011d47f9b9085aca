"""The marketer's commands on the shipped journeys and the CDNOW demo data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from click.testing import CliRunner

from clm import cli
from clm_core.db import tables as t
from clm_core.ingest.cdnow import import_cdnow
from clm_core.journeys.store import journey_files
from tests.conftest import REPO

SAMPLES = sorted(p.stem for p in journey_files(REPO / "journeys"))
# Journeys that enter on loyalty tiers and rewards: they need `clm loyalty` to have run
# (tests/test_loyalty_store.py plans them).
LOYALTY_SAMPLES = {"programme_welcome", "tier_upgrade", "points_expiring", "reward_ready"}
AS_OF = "1997-03-31"  # late in CDNOW's acquisition quarter: every stage has customers


def _project(tmp_path: Path) -> Path:
    for d in ("journeys", "templates"):
        shutil.copytree(REPO / d, tmp_path / d)
    (tmp_path / "clm.toml").write_text("[clm]\n")
    return tmp_path


def test_sample_journeys_validate_clean() -> None:
    result = CliRunner().invoke(cli, ["--project", str(REPO), "validate", "--strict"])
    assert result.exit_code == 0, result.output
    assert "0 error(s), 0 warning(s)" in result.output
    assert set(SAMPLES) == {"welcome", "second_purchase", "loyalty_reward", "at_risk", "winback",
                            "prospect_nurture", *LOYALTY_SAMPLES}


def test_plan_on_cdnow_is_non_empty_for_every_journey(engine: sa.Engine, db_url: str,
                                                      tmp_path: Path) -> None:
    import_cdnow(engine, sample=True, prospects=300)
    project = _project(tmp_path)
    for step in (["fit", "--as-of", AS_OF], ["score", "--as-of", AS_OF]):
        done = CliRunner().invoke(cli, ["--database", db_url, "--project", str(project), *step])
        assert done.exit_code == 0, done.output
    out = tmp_path / "plan.csv"
    # the plan runs on the data's clock: the morning after the as-of day (stage changes are
    # dated by the run's as-of day, and journeys enter on recent ones)
    result = CliRunner().invoke(cli, ["--database", db_url, "--project", str(project), "plan",
                                      "--at", "1997-04-01 10:00", "--csv", str(out)])
    assert result.exit_code == 0, result.output
    assert "dry run" in result.output
    table = pd.read_csv(out)
    # planned in parts of at most 100 customers: the same report and the same decisions
    (project / "clm.toml").write_text("[clm]\n[journeys]\ncustomers_per_pass = 100\n")
    parted = tmp_path / "parted.csv"
    again = CliRunner().invoke(cli, ["--database", db_url, "--project", str(project), "plan",
                                     "--at", "1997-04-01 10:00", "--csv", str(parted)])
    (project / "clm.toml").write_text("[clm]\n")
    assert again.exit_code == 0 and again.output == result.output.replace(
        str(out), str(parted)), again.output
    columns = list(table.columns)
    pd.testing.assert_frame_equal(
        pd.read_csv(parted).sort_values(columns).reset_index(drop=True),
        table.sort_values(columns).reset_index(drop=True))
    msgs = table[table["kind"] == "message"]
    per_journey = msgs.groupby("journey").size()
    assert set(per_journey.index) == set(SAMPLES) - LOYALTY_SAMPLES, per_journey
    assert (per_journey > 0).all()
    # sensible: control customers are never pending, quiet hours defer somebody, consent skips
    assert set(msgs["status"]) <= {"pending", "deferred", "skipped"}
    assert (msgs.loc[msgs["status"] == "deferred", "reason"] == "quiet_hours").any()
    assert (msgs.loc[msgs["status"] == "skipped", "reason"] == "control_group").any()
    assert msgs["customer"].str.startswith("cdnow-").all()
    with engine.connect() as conn:  # a dry run
        assert conn.scalar(sa.select(sa.func.count()).select_from(t.messages)) == 0
    # preview renders a real customer's messages in their locale
    zh = table.loc[(table["kind"] == "message") & (table["journey"] == "winback"), "customer"]
    with engine.connect() as conn:
        locales = dict(conn.execute(sa.select(t.customers.c.external_id, t.customers.c.locale)
                                    .where(t.customers.c.external_id.in_(list(zh)))).all())
    who = next(c for c, loc in locales.items() if loc == "zh-CN")
    shown = CliRunner().invoke(cli, ["--database", db_url, "--project", str(project), "preview",
                                     "winback", "--customer", who])
    assert shown.exit_code == 0, shown.output
    assert "拒收请回复R" in shown.output and "PREVIEW-CODE" in shown.output


def test_preview_unknown_step_says_what_exists(
    engine: sa.Engine, db_url: str, tmp_path: Path
) -> None:
    import_cdnow(engine, sample=True)
    result = CliRunner().invoke(cli, ["--database", db_url, "--project", str(_project(tmp_path)),
                                      "preview", "winback", "--customer", "cdnow-00001",
                                      "--step", "ofer"])
    assert result.exit_code == 1
    assert "no send step 'ofer' (did you mean 'offer'?)" in result.output
