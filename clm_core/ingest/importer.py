"""CSV import: validate every row, write the good ones in one transaction, report the rest.

A fatal problem (unreadable file, missing required column) raises DataImportError before
anything is written. Bad rows never stop the import: they go to a rejects CSV with their row
number, column and reason. Natural keys make re-importing the same file a no-op.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from clm_core.consent.ledger import after_import
from clm_core.db import tables as t
from clm_core.db.bulk import write_frame
from clm_core.ingest.csvfile import RawTable, read_table
from clm_core.ingest.fields import ENTITIES, Entity
from clm_core.ingest.validate import check_column
from clm_core.runs import utcnow


@dataclass
class ImportReport:
    entity: str
    file: str
    encoding: str
    rows_read: int = 0
    imported: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    customers_created: int = 0
    rejects_file: str | None = None
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    stages: dict[str, tuple[float, float]] = field(default_factory=dict)  # (wall, cpu) seconds

    def lines(self) -> list[str]:
        out = [f"{self.entity} from {self.file} ({self.encoding}): {self.rows_read} rows read, "
               f"{self.imported} imported ({self.inserted} new, {self.updated} updated, "
               f"{self.unchanged} unchanged), {self.rejected} rejected in {self.seconds:.1f}s"]
        if self.customers_created:
            out.append(f"  {self.customers_created} customers created from customer ids")
        ranked = sorted(self.reasons.items(), key=lambda kv: -kv[1])
        for reason, n in ranked[:10]:
            out.append(f"  rejected {n}: {reason}")
        if len(ranked) > 10:
            out.append(f"  ... and {len(ranked) - 10} other kinds of problem (see the rejects file)")
        if self.rejects_file:
            out.append(f"  bad rows written to {self.rejects_file}")
        return out


def validate_table(raw: RawTable, entity: Entity, *, region: str, tz: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(clean frame, problems frame with columns 'column' and 'reason' per bad row)."""
    clean = pd.DataFrame(index=raw.frame.index)
    problems: list[pd.DataFrame] = []
    for name in raw.frame.columns:
        values, reason = check_column(entity.field(name), raw.frame[name], region=region, tz=tz)
        clean[name] = values
        bad = reason.notna()
        if bad.any():
            problems.append(pd.DataFrame({"column": name, "reason": reason[bad]}))
    return clean, (pd.concat(problems) if problems else pd.DataFrame(columns=["column", "reason"]))


def _dedupe(clean: pd.DataFrame, keys: list[str], raw: RawTable, bad_index: pd.Index) -> pd.DataFrame:
    """Later rows repeating a natural key are rejected, pointing at the first."""
    if not all(k in clean.columns for k in keys):
        return pd.DataFrame(columns=["column", "reason"])
    good = clean.drop(index=bad_index)
    good = good[good[keys].notna().all(axis=1)]
    dup = good.duplicated(subset=keys, keep="first")
    if not dup.any():
        return pd.DataFrame(columns=["column", "reason"])
    first_row = raw.rows[good.index].groupby([good[k] for k in keys]).transform("first")
    reason = "duplicate " + "/".join(keys) + " (first at row " + first_row[dup].astype(str) + ")"
    return pd.DataFrame({"column": keys[0], "reason": reason})


def _customer_ids(conn: Connection, external_ids: pd.Series) -> tuple[pd.Series, int]:
    """Internal ids for customer external ids, creating bare customers for unknown ones."""
    ids = _id_map(conn)
    unknown = pd.Index(pd.unique(external_ids.dropna())).difference(ids.index)
    created = 0
    if len(unknown):
        created = write_frame(conn, t.customers, pd.DataFrame({"external_id": unknown}),
                              keys=["external_id"], bulk=True)
        ids = _id_map(conn)
    return pd.Series(ids.reindex(external_ids).to_numpy(), index=external_ids.index), created


def _id_map(conn: Connection) -> pd.Series:
    rows = conn.execute(sa.select(t.customers.c.external_id, t.customers.c.id)).all()
    return pd.Series([r[1] for r in rows], index=pd.Index([r[0] for r in rows], dtype=object),
                     dtype="int64")


def _consent_times(conn: Connection, df: pd.DataFrame, now: datetime) -> None:
    """Consent timestamps: the file's, else the stored one while consent stays given, else now
    for consent given by this import; none without consent. Re-importing changes nothing."""
    for channel in ("email", "sms"):
        flag, at = f"consent_{channel}", f"consent_{channel}_at"
        if flag not in df.columns:
            continue
        stamp = df[at] if at in df.columns else pd.Series(pd.NaT, index=df.index,
                                                          dtype="datetime64[us]")
        need = df[flag] & stamp.isna()
        if need.any():
            stored = pd.read_sql(sa.select(t.customers.c.external_id, t.customers.c[at])
                                 .where(t.customers.c[flag], t.customers.c[at].is_not(None)), conn)
            known = pd.Series(pd.to_datetime(stored[at]).to_numpy(), index=stored["external_id"])
            kept = pd.Series(known.reindex(df["external_id"]).to_numpy(), index=df.index,
                             dtype="datetime64[us]")
            stamp = stamp.mask(need, kept)
            stamp = stamp.mask(need & stamp.isna(), pd.Timestamp(now))
        df[at] = stamp.where(df[flag], pd.NaT).astype("datetime64[us]")


def _event_ids(df: pd.DataFrame) -> pd.Series:
    """Events without ids get one from their content, so re-importing a file adds nothing."""
    content = df.astype({c: str for c in df.columns if df[c].dtype == object})
    digest = pd.util.hash_pandas_object(content, index=False).to_numpy()
    return pd.Series(np.char.add("h", digest.astype(str)), index=df.index)


def _count(conn: Connection, table: sa.Table) -> int:
    return int(conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0)


def _write(conn: Connection, entity: Entity, clean: pd.DataFrame, extra: pd.DataFrame,
           report: ImportReport, now: datetime) -> pd.DataFrame:
    """Write the clean rows; returns problems found against the database (unknown orders)."""
    late = pd.DataFrame(columns=["column", "reason"])
    df = clean.copy()
    if entity.extra_column and not extra.empty:
        df[entity.extra_column] = [
            {k: v for k, v in rec.items() if isinstance(v, str)} or None
            for rec in extra.loc[df.index].to_dict(orient="records")]
    if entity.name == "customers":
        _consent_times(conn, df, now)
        table, keys = t.customers, ["external_id"]
    elif entity.name in ("orders", "events"):
        ids, report.customers_created = _customer_ids(conn, df.pop("customer_external_id"))
        df.insert(0, "customer_id", ids.astype("int64"))
        if entity.name == "orders" and "status" not in df.columns:
            df["status"] = "completed"
        table = t.orders if entity.name == "orders" else t.events
        keys = ["external_id"]
        if entity.name == "events" and "external_id" not in df.columns:
            df.insert(0, "external_id", _event_ids(df))
    else:  # order items
        orders = pd.read_sql(sa.select(t.orders.c.id, t.orders.c.external_id), conn)
        mapping = pd.Series(orders["id"].to_numpy(), index=orders["external_id"].to_numpy())
        order_ids = df.pop("order_external_id")
        df.insert(0, "order_id", order_ids.map(mapping))
        unknown = df["order_id"].isna()
        late = pd.DataFrame({"column": "order_external_id",
                             "reason": "unknown order " + order_ids[unknown].map(repr)})
        df = df[~unknown]
        df["order_id"] = df["order_id"].astype("int64")
        if "line_no" not in df.columns:
            df["line_no"] = df.groupby("order_id").cumcount() + 1
        table, keys = t.order_items, ["order_id", "line_no"]
    before = _count(conn, table)
    update = [c for c in df.columns if c not in keys]
    touch = "updated_at" if table is t.customers else None
    changed = write_frame(conn, table, df, keys=keys or None, update=update or None, touch=touch,
                          bulk=True)
    if table is t.customers:
        after_import(conn)  # the consent ledger's withdrawals outrank older flags in the file
    report.inserted = _count(conn, table) - before
    report.updated = changed - report.inserted
    report.imported = len(df)
    report.unchanged = report.imported - report.inserted - report.updated
    return late


def write_rejects(path: Path, raw: RawTable, problems: pd.DataFrame) -> None:
    grouped = problems.groupby(level=0).agg({"column": "; ".join, "reason": "; ".join})
    out = raw.original.loc[grouped.index].copy()
    out.insert(0, "reason", grouped["reason"])
    out.insert(0, "column", grouped["column"])
    out.insert(0, "row", raw.rows[grouped.index])
    malformed = pd.DataFrame([m.cells for m in raw.malformed], columns=raw.original.columns)
    malformed.insert(0, "reason", [m.reason for m in raw.malformed])
    malformed.insert(0, "column", "")
    malformed.insert(0, "row", [m.row for m in raw.malformed])
    out = pd.concat([out, malformed]).sort_values("row") if not malformed.empty else out
    out.to_csv(path, index=False, encoding="utf-8-sig")  # BOM: spreadsheets open it as UTF-8


class _Stages:
    """Wall and CPU seconds per stage, with an optional callback as each stage begins."""

    def __init__(self, report: ImportReport, on_stage: Callable[[str], None] | None):
        self.report, self.on_stage = report, on_stage

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.on_stage:
            self.on_stage(name)
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.report.stages[name] = (time.perf_counter() - wall, time.process_time() - cpu)


def import_csv(engine: Engine, entity_name: str, path: str | Path, *, encoding: str = "auto",
               mapping: dict[str, str] | None = None, region: str = "US", tz: str = "UTC",
               rejects: str | Path | None = None, now: datetime | None = None,
               on_stage: Callable[[str], None] | None = None) -> ImportReport:
    """Import one CSV file of ``customers``, ``orders``, ``order_items`` or ``events``.

    ``on_stage`` is called with "read", "validate", "write" and "rejects" as each begins
    (benchmarks sample memory with it); ``report.stages`` has each stage's wall and CPU time.
    """
    started = time.perf_counter()
    entity = ENTITIES[entity_name]
    path = Path(path)
    report = ImportReport(entity_name, str(path), encoding)
    stage = _Stages(report, on_stage)
    with stage("read"):
        raw = read_table(path, entity, encoding=encoding, mapping=mapping)
    report.encoding = raw.encoding
    report.rows_read = len(raw.frame) + len(raw.malformed)
    with stage("validate"):
        clean, problems = validate_table(raw, entity, region=region, tz=tz)
        keys = ["order_external_id", "line_no"] if entity_name == "order_items" else [entity.key]
        problems = pd.concat([problems, _dedupe(clean, keys, raw, problems.index.unique())])
        good = clean.drop(index=problems.index.unique())
    with stage("write"), engine.begin() as conn:
        late = _write(conn, entity, good, raw.extra, report, now or utcnow())
    problems = pd.concat([problems, late])
    report.rejected = problems.index.nunique() + len(raw.malformed)
    if report.rejected:
        with stage("rejects"):
            # One line per kind of problem: the reason without the offending value.
            kinds = problems["reason"].str.replace(r"\s*(?:['\"(:]|, got ).*$", "", regex=True)
            report.reasons = (problems["column"] + ": " + kinds).value_counts().to_dict()
            if raw.malformed:
                report.reasons["wrong number of fields"] = len(raw.malformed)
            target = Path(rejects) if rejects else Path.cwd() / f"rejects-{path.stem}.csv"
            write_rejects(target, raw, problems)
            report.rejects_file = str(target)
    report.seconds = time.perf_counter() - started
    return report
