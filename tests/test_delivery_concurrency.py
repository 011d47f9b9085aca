"""Three dispatcher processes on one database and one sandbox: zero duplicates. The sandbox
does not deduplicate here, so any message sent twice would show."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import sqlalchemy as sa

from clm_core.delivery.testing import seed_outbox
from tests.delivery_fixtures import clm, project, rows, sandbox, sandbox_server  # noqa: F401


def test_three_dispatchers_no_duplicates(
    tmp_path: Path, db_url: str, engine: sa.Engine, sandbox
) -> None:
    sandbox.store.set_faults({"idempotency": False, "rate_429": 0.05, "retry_after": 0, "seed": 5})
    root = project(tmp_path, db_url, sandbox, timeout=2.0, lease_seconds=30, backoff_base=0.05,
                   backoff_max=0.2, batch_size=50, lanes=2,
                   providers={"sendgrid": {"batch_size": 20}})
    email = seed_outbox(engine, 600, channel="email", prefix="e")
    sms = seed_outbox(engine, 200, channel="sms", prefix="s")

    procs = [clm(root, "dispatch", "--wait", "3") for _ in range(3)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [e.decode()[-2000:] for _, e in outputs]

    final = rows(engine)
    assert Counter(r["status"] for r in final) == {"sent": len(email) + len(sms)}
    assert sandbox.store.stats()["duplicates"] == 0
    assert all(sandbox.store.delivered[k] == 1 for k in email + sms)
    assert all(r["provider_message_id"] for r in final)
    # The processes shared the work (the claims really raced).
    sent_by = [int(re.search(r"sent ([\d,]+), failed", out.decode())[1].replace(",", ""))
               for out, _ in outputs]
    assert sum(sent_by) == len(final) and sum(1 for n in sent_by if n > 0) >= 2, sent_by
