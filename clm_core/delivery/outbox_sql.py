"""The two statements every wave of a send runs (mark ``sending``, record the outcomes), as
SQL text built once per database and run on the DBAPI cursor (``clm_core.db.rowset``).

Why: without provider batching a wave is a few messages (the provider's concurrency), so these
statements run for every few messages sent. Through SQLAlchemy Core most of their cost was
client-side (building and compiling a statement whose ``IN`` list and ``CASE`` changed with
the wave, one parameter dictionary and type processing per row, a Row per returned id): more
CPU than the database spent on them. Here the text never changes, rows are tuples, and
PostgreSQL gets each wave as one statement over arrays (one round trip, prepared once by
psycopg); SQLite, in this process, runs a prepared single-row statement per row. Errors are
wrapped as SQLAlchemy wraps them, so the outbox's retries on a busy database still apply.

Times are bound as ``datetime`` on PostgreSQL and as SQLAlchemy's SQLite text
(``rowset.stamp``) on SQLite, so rows written here compare like any other.
"""

from __future__ import annotations

import functools

# Only rows still claimed by their owner are marked; the digest column keeps its value where
# the wave has none (channels other than SMS).
_MARK_SQLITE = ("UPDATE messages SET reason = 'sending', lease_expires_at = ?, updated_at = ?, "
                "content_digest = coalesce(?, content_digest) "
                "WHERE id = ? AND lease_owner = ? AND status = 'claimed'")
_MARK_PG = ("UPDATE messages SET reason = 'sending', lease_expires_at = %(expires)s, "
            "updated_at = %(now)s, content_digest = coalesce(w.digest, messages.content_digest) "
            "FROM unnest(%(ids)s::bigint[], %(digests)s::text[]) AS w(id, digest) "
            "WHERE messages.id = w.id AND messages.lease_owner = %(owner)s "
            "AND messages.status = 'claimed' RETURNING messages.id")

# The columns of an outcome row, in order (PostgreSQL array types). ``undo`` gives a claim's
# attempt back when the provider never acted on the message; ``send_after`` NULL keeps the
# old one. An ``unknown`` row (lease ran out while sending) still takes its owner's outcome.
RECORD_COLUMNS = (("id", "bigint"), ("status", "text"), ("reason", "text"),
                  ("send_after", "timestamp"), ("provider", "text"), ("pmid", "text"),
                  ("code", "text"), ("msg", "text"), ("sent_at", "timestamp"), ("undo", "int"))
_SET = ("status = {status}, reason = {reason}, send_after = coalesce({send_after}, {t}send_after), "
        "provider = {provider}, provider_message_id = {pmid}, error_code = {code}, "
        "error_message = {msg}, sent_at = {sent_at}, attempts = {t}attempts - {undo}, "
        "lease_owner = NULL, lease_expires_at = NULL, updated_at = {now}")
_MINE = "{t}lease_owner = {owner} AND {t}status IN ('claimed', 'unknown')"


@functools.lru_cache(maxsize=4)
def mark_sql(dialect: str) -> str:
    """Mark a wave ``sending`` (SQLite: one row per execution; PostgreSQL: the wave, returning
    the ids still held)."""
    return _MARK_PG if dialect == "postgresql" else _MARK_SQLITE


@functools.lru_cache(maxsize=1)
def record_and_mark_pg() -> str:
    """PostgreSQL: record a lane's last wave and mark its next one ``sending`` in one
    statement (two data-modifying CTEs), so that in autocommit a wave is one round trip and
    one transaction: the next wave is marked only as the last one's outcomes are committed.
    The two waves' rows are different rows, as two updates of one statement require.
    Parameters: those of both statements (one ``owner``, ``now``); returns one row, the rows
    recorded and the array of ids marked (NULL when none)."""
    record = record_sql("postgresql") + " RETURNING 1"
    return (f"WITH recorded AS ({record}), marked AS ({_MARK_PG}) "
            "SELECT (SELECT count(*) FROM recorded), (SELECT array_agg(id) FROM marked)")


@functools.lru_cache(maxsize=4)
def record_sql(dialect: str) -> str:
    """Record outcomes (SQLite: one row per execution, parameters ``RECORD_COLUMNS`` then
    now, owner; PostgreSQL: the wave as arrays named after ``RECORD_COLUMNS``)."""
    names = [name for name, _ in RECORD_COLUMNS]
    if dialect != "postgresql":
        qmarks = {name: "?" for name in names}
        sets = _SET.format(t="", now="?", **{k: v for k, v in qmarks.items() if k != "id"})
        return (f"UPDATE messages SET {sets} WHERE id = ? AND "
                + _MINE.format(t="", owner="?"))
    cols = {name: f"o.{name}" for name in names if name != "id"}
    arrays = ", ".join(f"%({name})s::{kind}[]" for name, kind in RECORD_COLUMNS)
    sets = _SET.format(t="messages.", now="%(now)s", **cols)
    return (f"UPDATE messages SET {sets} FROM unnest({arrays}) AS o({', '.join(names)}) "
            f"WHERE messages.id = o.id AND " + _MINE.format(t="messages.", owner="%(owner)s"))
