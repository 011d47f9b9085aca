"""CSV import: validate every row, write the good ones in one transaction, report the rest.

A fatal problem (unreadable file, missing required column, an unknown phone region, unknown
columns under ``strict_columns``) raises DataImportError before anything is written. Bad rows
never stop the import. A bad value in a required field (an id, an order's time or amount)
rejects its row; a bad value in an optional field (a phone, a time zone, a consent flag) is
dropped, the row is kept with a warning, and a value already stored for that customer is kept
(``strict`` rejects such rows instead). Every row with a problem goes to the rejects file with
its severity, row number, column and reason. Natural keys make re-importing a file a no-op.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
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
from clm_core.errors import DataImportError
from clm_core.ingest.csvfile import RawTable, read_table
from clm_core.ingest.fields import ENTITIES, Entity
from clm_core.ingest.validate import amount_currencies, check_column, chinese_mobiles, known_region
from clm_core.lifecycle.aggregates import following_orders
from clm_core.runs import utcnow
from clm_core.spreadsheet import safe_cells
from clm_core.suggest import did_you_mean

PROBLEM_COLUMNS = ["severity", "column", "reason"]
_SHOWN = 10  # kinds of problem, unknown columns and new customer ids named in the summary


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
    warned: int = 0  # rows kept with one or more fields dropped
    customers_created: int = 0
    new_customer_ids: list[str] = field(default_factory=list)  # the first few of them
    unknown_columns: list[str] = field(default_factory=list)
    region: str = "US"
    chinese_phones: int = 0  # refused phones that are Chinese mobile numbers
    currency: str | None = None  # the store's currency
    other_currencies: dict[str, int] = field(default_factory=dict)
    rejects_file: str | None = None
    reasons: dict[str, int] = field(default_factory=dict)  # rejected rows by kind of problem
    warnings: dict[str, int] = field(default_factory=dict)  # dropped fields by kind
    seconds: float = 0.0
    stages: dict[str, tuple[float, float]] = field(default_factory=dict)  # (wall, cpu) seconds

    def lines(self) -> list[str]:
        warned = f", {self.warned} kept with warnings" if self.warned else ""
        out = [f"{self.entity} from {self.file} ({self.encoding}): {self.rows_read} rows read, "
               f"{self.imported} imported ({self.inserted} new, {self.updated} updated, "
               f"{self.unchanged} unchanged), {self.rejected} rejected{warned} "
               f"in {self.seconds:.1f}s"]
        if self.unknown_columns:
            where = (f"kept in {ENTITIES[self.entity].extra_column}"
                     if ENTITIES[self.entity].extra_column else "not imported")
            out.append(f"  {len(self.unknown_columns)} columns not recognised, {where}: "
                       f"{_listing(self.unknown_columns)} (read one as a field with "
                       "--map FIELD=COLUMN; --strict-columns refuses such files)")
        if self.customers_created:
            out.append(f"  {self.customers_created} customers created from this file's customer "
                       f"ids, with no contact details and no consent ("
                       f"{_listing(self.new_customer_ids, self.customers_created)}): import the "
                       "customers file to complete them")
        for title, kinds in (("rejected", self.reasons), ("kept, field dropped", self.warnings)):
            ranked = sorted(kinds.items(), key=lambda kv: -kv[1])
            out += [f"  {title} {n}: {reason}" for reason, n in ranked[:_SHOWN]]
            if len(ranked) > _SHOWN:
                out.append(f"  ... and {len(ranked) - _SHOWN} other kinds of problem "
                           "(see the rejects file)")
        if self.chinese_phones:
            out.append(f"  hint: {self.chinese_phones} phones look Chinese (11 digits starting "
                       f"with 1) but were read with default region {self.region}: import again "
                       "with --region CN")
        for code, n in sorted(self.other_currencies.items()):
            out.append(f"  note: {n} orders in {code}, not the store's currency {self.currency}: "
                       "amounts are not converted")
        if self.rejects_file:
            out.append(f"  rows with problems written to {self.rejects_file}")
        return out


def _listing(items: list[str], total: int | None = None) -> str:
    total = len(items) if total is None else total
    shown = ", ".join(items[:_SHOWN])
    return shown + (f" and {total - len(items[:_SHOWN])} more" if total > _SHOWN else "")


@dataclass
class Validated:
    """A validated table: clean values, problems by row, and the cells dropped to empty."""

    clean: pd.DataFrame
    problems: pd.DataFrame  # PROBLEM_COLUMNS, indexed like ``clean`` (a row may repeat)
    dropped: dict[str, pd.Index]  # column -> rows whose bad value was dropped (warnings)


def validate_table(raw: RawTable, entity: Entity, *, region: str, tz: str,
                   strict: bool = False) -> Validated:
    """Clean every column. A bad required value is an error; a bad optional one a warning,
    its cell emptied (an error too with ``strict``)."""
    clean = pd.DataFrame(index=raw.frame.index)
    problems: list[pd.DataFrame] = []
    dropped: dict[str, pd.Index] = {}
    for name in raw.frame.columns:
        spec = entity.field(name)
        values, reason = check_column(spec, raw.frame[name], region=region, tz=tz)
        bad = reason.notna()
        if bad.any():
            severity = "error" if spec.required or strict else "warning"
            problems.append(pd.DataFrame({"severity": severity, "column": name,
                                          "reason": reason[bad]}))
            if severity == "warning":
                values = values.mask(bad, False) if values.dtype == bool else values.mask(bad)
                dropped[name] = bad[bad].index
        clean[name] = values
    return Validated(clean, _problems(*problems), dropped)


def _problems(*frames: pd.DataFrame) -> pd.DataFrame:
    frames = tuple(f for f in frames if not f.empty)
    return pd.concat(frames) if frames else pd.DataFrame(columns=PROBLEM_COLUMNS)


def _dedupe(
    clean: pd.DataFrame, keys: list[str], raw: RawTable, bad_index: pd.Index
) -> pd.DataFrame:
    """Later rows repeating a natural key are rejected, pointing at the first."""
    if not all(k in clean.columns for k in keys):
        return _problems()
    good = clean.drop(index=bad_index)
    good = good[good[keys].notna().all(axis=1)]
    dup = good.duplicated(subset=keys, keep="first")
    if not dup.any():
        return _problems()
    first_row = raw.rows[good.index].groupby([good[k] for k in keys]).transform("first")
    reason = "duplicate " + "/".join(keys) + " (first at row " + first_row[dup].astype(str) + ")"
    return pd.DataFrame({"severity": "error", "column": keys[0], "reason": reason})


def _customer_ids(conn: Connection, external_ids: pd.Series) -> tuple[pd.Series, list[str]]:
    """Internal ids for customer external ids, creating bare customers for unknown ones
    (returned: the external ids created)."""
    wanted = pd.Index(pd.unique(external_ids.dropna()))
    ids = _id_map(conn, wanted)
    unknown = wanted.difference(ids.index)
    if len(unknown):
        write_frame(conn, t.customers, pd.DataFrame({"external_id": unknown}),
                    keys=["external_id"], bulk=True)
        ids = _id_map(conn, wanted)
    return (pd.Series(ids.reindex(external_ids).to_numpy(), index=external_ids.index),
            [str(v) for v in unknown])


# Customers' ids are looked up by key (a day's orders name a few thousand of a million
# customers) up to this many, or up to this share of the store when that is more; more read
# the whole table in one pass. A share, because a day's customers grow with the store: at ten
# million customers a day named 22,000, and reading all ten million took 19 s of the import.
_LOOKUP_MAX = 20_000
_LOOKUP_SHARE = 0.05


def _id_map(conn: Connection, wanted: pd.Index) -> pd.Series:
    """Internal ids by external id, of the ``wanted`` customers that exist."""
    c = t.customers
    size = 0 if len(wanted) <= _LOOKUP_MAX else int(  # the highest id: one seek, not a count
        conn.scalar(sa.select(sa.func.max(c.c.id))) or 0)
    if len(wanted) <= max(_LOOKUP_MAX, _LOOKUP_SHARE * size):
        keys = [str(k) for k in wanted]
        rows = [r for i in range(0, len(keys), _KEY_BATCH) for r in conn.execute(
            sa.select(c.c.external_id, c.c.id).where(c.c.external_id.in_(keys[i:i + _KEY_BATCH])))]
    else:
        rows = list(conn.execute(sa.select(c.c.external_id, c.c.id)).all())
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


_KEY_BATCH = 500  # natural keys per IN (...) query


def _new_rows(conn: Connection, table: sa.Table, df: pd.DataFrame,
              keys: list[str]) -> int | None:
    """How many rows of ``df`` are not in ``table`` yet (an upsert on ``keys`` inserts them), by
    their natural key: one index lookup a key. Counting the table before and after the write
    instead passes over all of it twice: at fifty million orders most of a day's import.
    None when the rows have no single natural key (order items: counted)."""
    if keys != ["external_id"]:
        return None
    ids = df["external_id"].dropna().unique().tolist()
    col = table.c.external_id
    stored = sum(int(conn.scalar(sa.select(sa.func.count()).select_from(table)
                                 .where(col.in_(ids[i:i + _KEY_BATCH]))) or 0)
                 for i in range(0, len(ids), _KEY_BATCH))
    return len(ids) - stored


def _keep_stored(conn: Connection, table: sa.Table, df: pd.DataFrame,
                 dropped: dict[str, pd.Index]) -> None:
    """Dropped cells of rows already in ``table`` take the stored value: a bad value in a file
    never erases a good one."""
    cols = [c for c, rows in dropped.items() if c in table.c and len(rows.intersection(df.index))]
    if not cols or "external_id" not in df.columns:
        return
    rows = pd.Index([]).append([dropped[c] for c in cols]).unique().intersection(df.index)
    keys = df.loc[rows, "external_id"].dropna().unique().tolist()
    parts = [pd.read_sql(sa.select(table.c.external_id, *(table.c[c] for c in cols))
                         .where(table.c.external_id.in_(keys[i:i + _KEY_BATCH])), conn)
             for i in range(0, len(keys), _KEY_BATCH)]
    stored = pd.concat(parts).set_index("external_id") if parts else pd.DataFrame()
    if stored.empty:
        return
    for c in cols:
        where = dropped[c].intersection(df.index)
        values = df.loc[where, "external_id"].map(stored[c])
        have = values.notna()
        if have.any():
            df.loc[where[have.to_numpy()], c] = values[have].astype(df[c].dtype)


def _write(conn: Connection, entity: Entity, clean: pd.DataFrame, extra: pd.DataFrame,
           report: ImportReport, now: datetime, dropped: dict[str, pd.Index]) -> pd.DataFrame:
    """Write the clean rows; returns problems found against the database (unknown orders)."""
    late = _problems()
    df = clean.copy()
    if entity.extra_column and not extra.empty:
        df[entity.extra_column] = [
            {k: v for k, v in rec.items() if isinstance(v, str)} or None
            for rec in extra.loc[df.index].to_dict(orient="records")]
    if entity.name == "customers":
        _keep_stored(conn, t.customers, df, dropped)
        _consent_times(conn, df, now)
        table, keys = t.customers, ["external_id"]
    elif entity.name in ("orders", "events"):
        table = t.orders if entity.name == "orders" else t.events
        _keep_stored(conn, table, df, dropped)
        ids, created = _customer_ids(conn, df.pop("customer_external_id"))
        report.customers_created, report.new_customer_ids = len(created), created[:_SHOWN]
        df.insert(0, "customer_id", ids.astype("int64"))
        if entity.name == "orders":
            df["status"] = df["status"].fillna("completed") if "status" in df else "completed"
        keys = ["external_id"]
        if entity.name == "events":  # an event without an id gets one from its content
            if "external_id" not in df.columns:
                df.insert(0, "external_id", _event_ids(df))
            elif df["external_id"].isna().any():
                df["external_id"] = df["external_id"].fillna(
                    _event_ids(df.drop(columns="external_id")))
    else:  # order items
        orders = pd.read_sql(sa.select(t.orders.c.id, t.orders.c.external_id), conn)
        mapping = pd.Series(orders["id"].to_numpy(), index=orders["external_id"].to_numpy())
        order_ids = df.pop("order_external_id")
        df.insert(0, "order_id", order_ids.map(mapping))
        unknown = df["order_id"].isna()
        late = pd.DataFrame({"severity": "error", "column": "order_external_id",
                             "reason": "unknown order " + order_ids[unknown].map(repr)})
        df = df[~unknown]
        df["order_id"] = df["order_id"].astype("int64")
        if "line_no" not in df.columns:
            df["line_no"] = df.groupby("order_id").cumcount() + 1
        table, keys = t.order_items, ["order_id", "line_no"]
    new = _new_rows(conn, table, df, keys)
    before = _count(conn, table) if new is None else 0
    update = [c for c in df.columns if c not in keys]
    touch = "updated_at" if table is t.customers else None
    # Orders carry the purchase aggregates with them (a cancellation is a re-import with the
    # new status); the other tables have nothing to follow.
    following: AbstractContextManager[None] = (following_orders(conn, df, new)
                                               if table is t.orders else nullcontext())
    with following:
        changed = write_frame(conn, table, df, keys=keys or None, update=update or None,
                              touch=touch, bulk=True)
    if table is t.customers:
        after_import(conn)  # the consent ledger's withdrawals outrank older flags in the file
    report.inserted = new if new is not None else _count(conn, table) - before
    report.updated = changed - report.inserted
    report.imported = len(df)
    report.unchanged = report.imported - report.inserted - report.updated
    return late


def write_rejects(path: Path, raw: RawTable, problems: pd.DataFrame) -> None:
    """One line per row with a problem: its row number, severity (``error``: not imported;
    ``warning``: imported without the named fields), columns, reasons and original cells.
    UTF-8 with BOM, so spreadsheets open it as UTF-8; no cell can start a formula."""
    grouped = problems.groupby(level=0).agg({"severity": lambda s: "error" if (s == "error").any()
                                             else "warning",
                                             "column": "; ".join, "reason": "; ".join})
    out = raw.original.loc[grouped.index].copy()
    for name in reversed(PROBLEM_COLUMNS):
        out.insert(0, name, grouped[name])
    out.insert(0, "row", raw.rows[grouped.index])
    malformed = pd.DataFrame([m.cells for m in raw.malformed], columns=raw.original.columns)
    malformed.insert(0, "reason", [m.reason for m in raw.malformed])
    malformed.insert(0, "column", "")
    malformed.insert(0, "severity", "error")
    malformed.insert(0, "row", [m.row for m in raw.malformed])
    out = pd.concat([out, malformed]).sort_values("row") if not malformed.empty else out
    try:
        safe_cells(out).to_csv(path, index=False, encoding="utf-8-sig")
    except OSError as exc:
        raise DataImportError(f"cannot write the rejects file {path}: {exc.strerror or exc}; "
                              "name another with --rejects PATH") from exc


def rejects_path(source: Path, rejects: str | Path | None) -> Path:
    """``--rejects`` if given, else ``<name>-rejects.csv`` next to the input file (in the
    working directory when the input's directory is not writable)."""
    if rejects:
        return Path(rejects)
    name = f"{source.stem}-rejects.csv"
    folder = source.parent
    return folder / name if os.access(folder, os.W_OK) else Path.cwd() / name


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
               strict: bool = False, strict_columns: bool = False, currency: str | None = None,
               on_stage: Callable[[str], None] | None = None) -> ImportReport:
    """Import one CSV file of ``customers``, ``orders``, ``order_items`` or ``events``.

    ``region``: the country of phones written without ``+code``; ``currency``: the store's,
    for orders that name none. ``strict``: a bad optional field rejects its row too;
    ``strict_columns``: a column that matches no field is a fatal error.
    ``on_stage`` is called with "read", "validate", "write" and "rejects" as each begins
    (benchmarks sample memory with it); ``report.stages`` has each stage's wall and CPU time.
    """
    started = time.perf_counter()
    entity = ENTITIES[entity_name]
    path = Path(path)
    known = known_region(region)
    if known is None:
        raise DataImportError(f"unknown phone region {region!r}: use a two-letter country code "
                              "such as US, CN or GB")
    report = ImportReport(entity_name, str(path), encoding, region=known, currency=currency)
    stage = _Stages(report, on_stage)
    with stage("read"):
        raw = read_table(path, entity, encoding=encoding, mapping=mapping)
    report.encoding = raw.encoding
    report.rows_read = len(raw.frame) + len(raw.malformed)
    report.unknown_columns = raw.unknown_columns
    if strict_columns and raw.unknown_columns:
        raise DataImportError(_unknown_columns_error(path, entity, raw.unknown_columns))
    with stage("validate"):
        checked = validate_table(raw, entity, region=known, tz=tz, strict=strict)
        clean, problems = checked.clean, checked.problems
        if entity_name == "orders":
            _currencies(clean, raw, report)
        keys = ["order_external_id", "line_no"] if entity_name == "order_items" else [entity.key]
        errors = problems.index[problems["severity"] == "error"].unique()
        problems = _problems(problems, _dedupe(clean, keys, raw, errors))
        errors = problems.index[problems["severity"] == "error"].unique()
        good = clean.drop(index=errors)
        if "phone" in raw.frame and known != "CN":
            # Refused ones are the evidence; accepted ones may be misread too (13612345678 is
            # also a valid Texas number), so all of them are counted once there is evidence.
            refused = problems.index[problems["column"] == "phone"].unique()
            if chinese_mobiles(raw.frame.loc[refused, "phone"]):
                report.chinese_phones = chinese_mobiles(raw.frame["phone"])
    with stage("write"), engine.begin() as conn:
        late = _write(conn, entity, good, raw.extra, report, now or utcnow(), checked.dropped)
    problems = _problems(problems, late)
    errors = problems.index[problems["severity"] == "error"].unique()
    report.rejected = len(errors) + len(raw.malformed)
    report.warned = problems.index.unique().difference(errors).size
    target = rejects_path(path, rejects)
    if len(problems) or raw.malformed:
        with stage("rejects"):
            # One line per kind of problem: the reason without the offending value.
            kinds = problems["reason"].str.replace(r"\s*(?:['\"(:]|, got ).*$", "", regex=True)
            label = problems["column"] + ": " + kinds
            is_error = problems.index.isin(errors)
            report.reasons = label[is_error].value_counts().to_dict()
            report.warnings = label[~is_error].value_counts().to_dict()
            if raw.malformed:
                report.reasons["wrong number of fields"] = len(raw.malformed)
            write_rejects(target, raw, problems)
            report.rejects_file = str(target)
    elif rejects is None and target.is_file():
        target.unlink()  # an earlier run's rejects no longer describe this file
    report.seconds = time.perf_counter() - started
    return report


def _currencies(clean: pd.DataFrame, raw: RawTable, report: ImportReport) -> None:
    """Every order gets a currency: the file's, else the one its amount names (``¥88``), else
    the store's; orders in another currency are counted for the summary."""
    given = clean["currency"] if "currency" in clean else pd.Series(None, index=clean.index,
                                                                    dtype=object)
    missing = given.isna()
    if missing.any():
        given = given.fillna(amount_currencies(raw.frame.loc[missing, "amount"]))
    clean["currency"] = given.fillna(report.currency or np.nan)
    if report.currency:
        other = clean["currency"].dropna()
        other = other[other != report.currency]
        report.other_currencies = {str(k): int(v) for k, v in other.value_counts().items()}


def _unknown_columns_error(path: Path, entity: Entity, columns: list[str]) -> str:
    names = [n for f in entity.fields for n in (f.name, *f.aliases)]
    hints = "".join(f"; {c!r}{did_you_mean(c, names)}" for c in columns if did_you_mean(c, names))
    return (f"{path}: {len(columns)} columns match no field of {entity.name}: "
            f"{_listing(columns)}{hints}; read one with --map FIELD=COLUMN, or import without "
            "--strict-columns to " + (f"keep them in {entity.extra_column}" if entity.extra_column
                                      else "leave them out"))
