"""Property tests: random journeys, customers in several time zones and clocks around DST changes,
evaluated repeatedly like the daily flow would. Whatever hypothesis draws:

- no customer gets more messages than a cap allows in any window;
- no message is scheduled inside quiet hours in the customer's local time;
- holdout (control) customers are never messaged;
- evaluating twice at the same time creates nothing;
- re-entry follows the journey's policy.
"""

from __future__ import annotations

from datetime import time, timedelta

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clm_core.journeys import clock
from clm_core.journeys.engine import ENROLLMENT_COLUMNS, Plan, Snapshot, empty_enrollments, plan
from clm_core.journeys.model import Cap, ProjectPolicy, QuietHours
from tests.journey_helpers import journey

ZONES = ["America/New_York", "America/Los_Angeles", "Europe/London", "Europe/Berlin",
         "Australia/Sydney", "Asia/Shanghai", "Asia/Kolkata", "UTC"]
# days just before a DST change: US 2026-03-08 / 2026-11-01, EU 2026-03-29 / 2026-10-25,
# Australia 2026-04-05 / 2026-10-04
STARTS = [pd.Timestamp(d) for d in ("2026-03-06", "2026-03-27", "2026-04-03", "2026-10-02",
                                    "2026-10-23", "2026-10-30", "2026-06-15")]


@st.composite
def journey_texts(draw: st.DrawFn, index: int) -> str:
    reentry = draw(
        st.sampled_from(
            [
                "{policy: once}",
                "{policy: rematch}",
                "{policy: rematch, min_gap: 1d}",
                "{policy: interval, every: 2d}",
            ]
        )
    )
    steps = []
    for k in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["email", "sms", "wait", "until", "branch", "split"]))
        if kind in ("email", "sms"):
            tag = draw(st.sampled_from(["", ", tags: [promo]"]))
            steps.append(f"  - id: s{k}\n    send: {{channel: {kind}, template: t{k}{tag}}}")
        elif kind == "wait":
            steps.append(
                f"  - id: s{k}\n    wait: {draw(st.sampled_from(['2h', '12h', '1d', '3d']))}"
            )
        elif kind == "branch":
            steps.append(f"  - id: s{k}\n    branch:\n      - when: {{field: clv_12m, gt: 100}}\n"
                         f"        goto: last")
        elif kind == "split":
            steps.append(
                f"  - id: s{k}\n    split:\n      - {{variant: a, weight: 1, goto: last}}\n"
                f"      - {{variant: b, weight: 2, goto: s{k}_b}}\n  - id: s{k}_b\n"
                f"    send: {{channel: email, template: b}}"
            )
        else:
            days = draw(st.sampled_from(["", ", weekdays: [mon, wed, sat]"]))
            steps.append(f"  - id: s{k}\n    wait: {{until: \"{draw(st.integers(0, 23)):02d}:"
                         f"{draw(st.sampled_from([0, 30])):02d}\"{days}}}")
    steps.append("  - id: last\n    send: {channel: sms, template: last}")
    actions = [draw(st.sampled_from(["defer", "skip", "end"])) for _ in range(2)]
    return f"""
name: j{index}
status: active
priority: {draw(st.integers(0, 3))}
tags: [marketing]
entry:
  {draw(st.sampled_from(["segment: {field: stage, eq: new}", "stage: {to: new}"]))}
  reentry: {reentry}
holdout: {{percent: {draw(st.sampled_from([0, 30, 100]))}}}
contact_policy: {{quiet_hours: {actions[0]}, frequency: {actions[1]}}}
steps:
""" + "\n".join(steps) + "\n"


@st.composite
def scenarios(draw: st.DrawFn) -> dict:
    n_journeys = draw(st.integers(1, 3))
    texts = [draw(journey_texts(i)) for i in range(n_journeys)]
    caps = [
        Cap(
            channel=draw(st.sampled_from(["email", "sms", None])),
            tag=draw(st.sampled_from([None, "marketing", "promo"])),
            max=draw(st.integers(1, 3)),
            window=timedelta(hours=draw(st.sampled_from([6, 24, 72]))),
        )
        for _ in range(draw(st.integers(0, 2)))
    ]
    start_h, end_h = draw(st.integers(18, 23)), draw(st.integers(6, 10))
    n = draw(st.integers(1, 25))
    start = draw(st.sampled_from(STARTS)) + pd.Timedelta(hours=draw(st.integers(0, 23)))
    gaps = draw(st.lists(st.sampled_from([1, 3, 7, 12, 24, 36]), min_size=2, max_size=5))
    stages = draw(st.lists(st.lists(st.booleans(), min_size=n, max_size=n),
                           min_size=len(gaps) + 1, max_size=len(gaps) + 1))
    return {"texts": texts, "caps": caps, "quiet": QuietHours(start=time(start_h), end=time(end_h)),
            "zones": draw(st.lists(st.sampled_from(ZONES), min_size=n, max_size=n)),
            "consent": draw(st.lists(st.booleans(), min_size=n, max_size=n)),
            "start": start, "gaps": gaps, "stages": stages}


class World:
    """An in-memory outbox and enrollment table, written the way the store writes them."""

    def __init__(self) -> None:
        self.enrollments = empty_enrollments()
        self.messages = pd.DataFrame()
        self.next_id = 1

    def latest(self) -> pd.DataFrame:
        e = self.enrollments.sort_values("entry_seq")
        return e.groupby(["journey", "customer_id"]).tail(1)[ENROLLMENT_COLUMNS]

    def ledger(self) -> pd.DataFrame:
        if self.messages.empty:
            return Snapshot(pd.DataFrame()).ledger
        live = self.messages[self.messages["status"] != "skipped"]
        return pd.DataFrame({"customer_id": live["customer_id"], "channel": live["channel"],
                             "tags": live["tags"], "at": live["send_after"]})

    def apply(self, p: Plan) -> tuple[int, int]:
        e = p.enrollments.copy()
        new = e[e["is_new"]].copy()
        ids = dict(zip(new["id"], range(self.next_id, self.next_id + len(new))))
        self.next_id += len(new)
        new["id"] = new["id"].map(ids)
        old = e[~e["is_new"]]
        keep = self.enrollments[~self.enrollments["id"].isin(old["id"])]
        self.enrollments = pd.concat([keep, old[ENROLLMENT_COLUMNS], new[ENROLLMENT_COLUMNS]],
                                     ignore_index=True)
        m = p.messages.copy()
        if len(m):
            m["enrollment_id"] = m["enrollment_id"].map(lambda i: ids.get(i, i))
            m["idempotency_key"] = (
                m["journey"] + "/" + m["step_id"] + "/" + m["enrollment_id"].astype(str)
            )
            known = set(self.messages["idempotency_key"]) if len(self.messages) else set()
            m = m[~m["idempotency_key"].isin(known)]
            self.messages = pd.concat([self.messages, m], ignore_index=True)
        return len(new), len(m)

    def snapshot(self, customers: pd.DataFrame, transitions: pd.DataFrame) -> Snapshot:
        return Snapshot(customers, enrollments=self.latest(), ledger=self.ledger(),
                        transitions=transitions)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_random_journeys_keep_every_promise(sc: dict) -> None:
    journeys = [journey(text) for text in sc["texts"]]
    policy = ProjectPolicy(caps=sc["caps"], quiet_hours=sc["quiet"])
    n = len(sc["zones"])
    world = World()
    now = sc["start"]
    times = [now] + [now := now + pd.Timedelta(hours=h) for h in sc["gaps"]]
    was_new = np.zeros(n, dtype=bool)
    transitions = Snapshot(pd.DataFrame()).transitions
    for at, stage_flags in zip(times, sc["stages"]):
        moved = np.asarray(stage_flags) & ~was_new  # the lifecycle records a move into "new"
        was_new = np.asarray(stage_flags)
        transitions = pd.concat([transitions, pd.DataFrame({
            "customer_id": np.arange(1, n + 1)[moved], "from_stage": "active", "to_stage": "new",
            "transitioned_at": at})], ignore_index=True)
        transitions["transitioned_at"] = transitions["transitioned_at"].astype("datetime64[ns]")
        customers = pd.DataFrame({
            "stage": np.where(stage_flags, "new", "active"), "timezone": sc["zones"],
            "clv_12m": np.arange(n) * 20.0,
            "consent_email": sc["consent"], "consent_sms": True,
            "email": "x@example.com", "phone": "+12025550100"},
            index=pd.Index(np.arange(1, n + 1), name="customer_id"))
        world.apply(plan(journeys, world.snapshot(customers, transitions), at, policy))
        # the same evaluation again: nothing new, nothing changed
        again = plan(journeys, world.snapshot(customers, transitions), at, policy)
        assert again.enrollments.empty and again.messages.empty

    msgs = world.messages
    if msgs.empty:
        return
    live = msgs[msgs["status"] != "skipped"]
    # caps: every window of each cap's length holds at most `max` matching messages
    for cap in policy.caps:
        hit = live if cap.channel is None else live[live["channel"] == cap.channel]
        if cap.tag is not None:
            hit = hit[hit["tags"].map(lambda tags, tag=cap.tag: tag in tags).astype(bool)]
        for _, times_ in hit.groupby("customer_id")["send_after"]:
            t = np.sort(times_.to_numpy())
            # for each message, how many start within [t_i, t_i + window)
            upto = np.searchsorted(t, t + np.timedelta64(cap.window), side="left")
            assert (upto - np.arange(len(t))).max() <= cap.max, (cap, t)
    # quiet hours, in each customer's own zone
    zones = pd.Series(sc["zones"], index=np.arange(1, n + 1))
    inside = clock.in_window(live["send_after"].reset_index(drop=True),
                             zones.loc[live["customer_id"]].reset_index(drop=True),
                             policy.quiet_hours.start, policy.quiet_hours.end)
    assert not inside.any(), live[inside.to_numpy()]
    # nothing is scheduled before it was planned
    assert (live["send_after"] >= times[0]).all()
    # holdout: control enrollments never get a message
    control_ids = set(world.enrollments.loc[world.enrollments["is_control"], "id"])
    assert not live["enrollment_id"].isin(control_ids).any()
    assert (msgs.loc[msgs["enrollment_id"].isin(control_ids), "reason"] == "control_group").all()
    # consent: nobody without email consent gets an email
    no_consent = {i + 1 for i, ok in enumerate(sc["consent"]) if not ok}
    assert not (live["customer_id"].isin(no_consent) & (live["channel"] == "email")).any()
    # re-entry policy
    for j in journeys:
        e = world.enrollments[world.enrollments["journey"] == j.name].sort_values("entry_seq")
        policy_ = j.spec.entry.reentry
        moves = transitions.groupby("customer_id").size()
        for cid, rows in e.groupby("customer_id"):
            assert (rows["status"] == "active").sum() <= 1
            if j.spec.entry.stage is not None:  # each entry uses up a move into the stage
                assert len(rows) <= moves.get(cid, 0)
            assert rows["entry_seq"].tolist() == list(range(1, len(rows) + 1))
            if policy_.policy == "once":
                assert len(rows) == 1
            prev = rows.iloc[:-1]
            nxt = rows.iloc[1:]
            assert (nxt["entered_at"].to_numpy() >= prev["exited_at"].to_numpy()).all()
            if policy_.min_gap is not None:
                gap = nxt["entered_at"].to_numpy() - prev["exited_at"].to_numpy()
                assert (gap >= np.timedelta64(policy_.min_gap)).all()
            if policy_.every is not None:
                gap = nxt["entered_at"].to_numpy() - prev["entered_at"].to_numpy()
                assert (gap >= np.timedelta64(policy_.every)).all()
