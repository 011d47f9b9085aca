"""Builders shared by the journey tests: scored customers written straight to the database,
and journeys from YAML text."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from clm_core.db import tables as t
from clm_core.db.bulk import write_frame
from clm_core.journeys.loader import CompiledJourney, parse_journey
from clm_core.settings import Settings, load_settings

ZONES = ["America/New_York", "Europe/London", "Asia/Shanghai", "Australia/Sydney", "UTC"]


def journey(text: str, version: int = 1) -> CompiledJourney:
    j = parse_journey(text, "test.yaml")
    j.version = version
    return j


def customers_frame(n: int, seed: int = 0, stage: str = "new", **overrides: object) -> pd.DataFrame:
    """Scored customers, index customer_id 1..n, the engine's Snapshot.customers shape."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "stage": stage, "stage_since": pd.Timestamp("2026-11-20"),
        "clv_12m": rng.gamma(2.0, 60.0, n).round(2), "p_alive": rng.random(n).round(3),
        "n_orders": rng.integers(0, 6, n), "rfm_segment": "regular",
        "timezone": np.array(ZONES, dtype=object)[rng.integers(0, len(ZONES), n)],
        "consent_email": True, "consent_sms": True,
        "email": [f"c{i}@example.com" for i in range(1, n + 1)],
        "phone": [f"+1202555{i % 10000:04d}" for i in range(1, n + 1)], "locale": "en-US",
    }, index=pd.Index(np.arange(1, n + 1), name="customer_id"))
    for k, v in overrides.items():
        df[k] = v
    return df


def transitions_frame(
    ids: np.ndarray, to: str, at: str | pd.Timestamp, frm: str = "prospect"
) -> pd.DataFrame:
    return pd.DataFrame({"customer_id": np.asarray(ids, dtype="int64"), "from_stage": frm,
                         "to_stage": to, "transitioned_at": pd.Timestamp(at).as_unit("ns")})


def store_customers(engine: sa.Engine, df: pd.DataFrame, as_of: datetime) -> pd.Series:
    """Write customers + customer_scores rows for ``df``; returns db ids by frame index."""
    people = pd.DataFrame(
        {
            "external_id": [f"t-{i}" for i in df.index],
            "name": [f"Customer {i}" for i in df.index],
            "email": df["email"].to_numpy(),
            "phone": df["phone"].to_numpy(),
            "locale": df["locale"].to_numpy(),
            "timezone": df["timezone"].to_numpy(),
            "consent_email": df["consent_email"].to_numpy(bool),
            "consent_sms": df["consent_sms"].to_numpy(bool),
        }
    )
    with engine.begin() as conn:
        write_frame(conn, t.customers, people, keys=["external_id"])
        rows = conn.execute(sa.select(t.customers.c.id, t.customers.c.external_id)).all()
        ids = {e: i for i, e in rows}
        db_ids = pd.Series([ids[f"t-{i}"] for i in df.index], index=df.index)
        scores = pd.DataFrame({
            "customer_id": db_ids.to_numpy(), "as_of": pd.Timestamp(as_of).normalize(),
            "n_orders": df["n_orders"].to_numpy(), "clv_12m": df["clv_12m"].to_numpy(),
            "p_alive": df["p_alive"].to_numpy(), "rfm_segment": df["rfm_segment"].to_numpy(),
            "stage": df["stage"].to_numpy(), "stage_since": df["stage_since"].to_numpy(),
            "recorded_at": pd.Timestamp(as_of)})
        write_frame(conn, t.customer_scores, scores, keys=["customer_id"],
                    update=[c for c in scores.columns if c != "customer_id"])
    return db_ids


def store_transitions(
    engine: sa.Engine, ids: pd.Series, to: str, at: datetime, frm: str = "prospect"
) -> None:
    frame = pd.DataFrame(
        {
            "customer_id": ids.to_numpy(),
            "from_stage": frm,
            "to_stage": to,
            "transitioned_at": pd.Timestamp(at),
            "as_of": pd.Timestamp(at).normalize(),
        }
    )
    with engine.begin() as conn:
        write_frame(conn, t.stage_transitions, frame)


def project(tmp_path: Path, db_url: str, journeys: dict[str, str], toml: str = "") -> Settings:
    (tmp_path / "journeys").mkdir(exist_ok=True)
    for name, text in journeys.items():
        (tmp_path / "journeys" / f"{name}.yaml").write_text(text, encoding="utf-8")
    (tmp_path / "clm.toml").write_text(toml, encoding="utf-8")
    return load_settings(tmp_path, env={"CLM_DATABASE_URL": db_url})

