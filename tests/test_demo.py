"""``clm demo`` in a new project, as a user runs it, then ``clm status`` and ``clm run``.

One subprocess chain on SQLite with the CDNOW sample and two simulated weeks: the demo exits 0
without a traceback and tells what happened; the sandbox's open and click callbacks decided the
welcome journey's branch both ways and ended at_risk enrollments at their clicked goal;
``clm status`` shows the same runs and durations; ``clm run`` right after continues the demo's
clock and signs with the demo's key (no CLM_SECRET_KEY in the environment).
"""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import subprocess
from pathlib import Path

from tests.test_project import clm


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_shop(tmp_path: Path) -> Path:
    """``clm init shop`` with its own sandbox port: other demos may run on this machine."""
    assert clm(tmp_path, "init", "shop").returncode == 0
    shop = tmp_path / "shop"
    toml = shop / "clm.toml"
    toml.write_text(toml.read_text().replace('# sandbox_url = "http://127.0.0.1:8025"',
                                             f'sandbox_url = "http://127.0.0.1:{free_port()}"'))
    return shop


def test_demo_then_status_then_run_in_a_new_project(tmp_path: Path) -> None:
    shop = new_shop(tmp_path)

    demo = clm(shop, "demo", "--sample", "--weeks", "2", timeout=900)
    out = demo.stdout + demo.stderr
    assert demo.returncode == 0, out
    assert "Traceback" not in out
    for heading in ("Week by week", "Customers by stage now", "What each journey did",
                    "For example, what was sent to whom and why", "0 duplicate sends"):
        assert heading in out, heading
    key = shop / ".clm" / "secret-key"
    assert key.stat().st_mode & 0o777 == 0o600
    _assert_engagement_drove_the_journeys(shop / "clm.db", demo.stdout)
    weeks = re.findall(
        r"^  (1997-\d\d-\d\d)  (1997-\d\d-\d\d \d\d:\d\d) .* (\d+\.\d)s$", demo.stdout, re.MULTILINE
    )
    assert [w[:2] for w in weeks] == [("1997-03-31", "1997-04-01 10:00"),
                                      ("1997-04-07", "1997-04-08 10:00")]
    took = float(re.search(r"^took\s+(\d+\.\d)s", demo.stdout, re.MULTILINE).group(1))  # type: ignore[union-attr]

    status = clm(shop, "status", "--json")
    assert status.returncode == 0, status.stderr
    runs = json.loads(status.stdout)["runs"]
    recorded = {}
    for r in runs:
        seconds = (_t(r["finished_at"]) - _t(r["started_at"])).total_seconds()
        recorded.setdefault(r["kind"], []).append((r["summary"] or {}, f"{seconds:.1f}"))
    assert recorded["demo"][0][1] == f"{took:.1f}"
    lifecycle = sorted((s["as_of"], f"{_t(s['now']):%Y-%m-%d %H:%M}", secs)
                       for s, secs in recorded["lifecycle"])
    assert lifecycle == [(a, n, secs) for a, n, secs in weeks]
    text = clm(shop, "status").stdout
    assert "as of 1997-04-07, clock 1997-04-08 10:00 simulated" in text
    # the providers' reports and the sends share the simulated clock: the rates count both
    rates = r"^  email \S+: complaints \d+\.\d\d% \(\d+/[1-9][\d,]*\)"
    assert re.search(rates, text, re.MULTILINE), text

    run = clm(shop, "run", timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    assert run.stdout.startswith("as of 1997-04-08: the next day on the simulated clock"), (
        run.stdout
    )
    assert "\nnow 1997-04-09 10:00:00 UTC: the next day on the simulated clock" in run.stdout
    assert "CLM_SECRET_KEY" not in run.stdout + run.stderr
    assert not subprocess.run(["grep", "-rl", key.read_text().strip(), str(shop / ".clm" / "logs"),
                               str(shop / "clm.db")], capture_output=True, check=False).stdout, \
        "the key never appears in logs or the database"


def _assert_engagement_drove_the_journeys(db: Path, story: str) -> None:
    """The sandbox's signed open and click callbacks, stored by clm serve's app on the demo's
    clock, decided the welcome branch both ways and ended at_risk enrollments at the clicked
    goal; the story reports the same counts."""
    with sqlite3.connect(db) as conn:
        def routes(step: str, opened: bool) -> tuple[int, int]:
            """Enrollments routed to ``step``, and how many of them match what they did: an
            open in the week before the branch (openers) or none (the others)."""
            rows = conn.execute(
                "SELECT m.enrollment_id, EXISTS (SELECT 1 FROM events v WHERE v.customer_id = "
                "m.customer_id AND v.event_type = 'opened' AND v.occurred_at <= m.created_at AND "
                "v.occurred_at >= datetime(m.created_at, '-7 days')) FROM messages m "
                "WHERE m.journey = 'welcome' AND m.step_id = ?", (step,)).fetchall()
            return len(rows), sum(1 for _, hit in rows if bool(hit) == opened)

        discover, discover_right = routes("discover", True)
        nudge, nudge_right = routes("nudge", False)
        clicked = conn.execute(
            "SELECT e.id, e.converted_at, (SELECT min(v.occurred_at) FROM events v "
            "WHERE v.customer_id = e.customer_id AND v.event_type = 'clicked' "
            "AND v.occurred_at > e.entered_at) FROM journey_enrollments e "
            "WHERE e.journey = 'at_risk' AND e.goal = 'clicked' AND e.status = 'converted'"
        ).fetchall()
    assert discover > 0 and nudge > 0, (discover, nudge)
    assert (discover_right, nudge_right) == (discover, nudge)
    assert clicked and all(first is not None and first[:19] <= at[:19] for _, at, first in clicked)
    assert (f"welcome: branch 'opened_thanks': {discover:,} opened an email within 7d and took "
            f"discover (welcome_discover); {nudge:,} did not and took nudge") in story
    assert f"{len(clicked):,} of " in story and "reached the goal 'clicked'" in story


def _t(value: str):  # type: ignore[no-untyped-def]
    from datetime import datetime

    return datetime.fromisoformat(value)
