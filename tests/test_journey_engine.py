"""Engine semantics, one behaviour per test, on in-memory snapshots."""

from __future__ import annotations

from datetime import time, timedelta

import numpy as np
import pandas as pd
import pytest

from clm_core.journeys import clock, hashing
from clm_core.journeys.engine import ENROLLMENT_COLUMNS, Plan, Snapshot, _groups, plan
from clm_core.journeys.model import Cap, ProjectPolicy, QuietHours
from tests.journey_helpers import customers_frame, journey, transitions_frame

NOW = pd.Timestamp("2026-11-24 15:00")  # 10:00 in New York, 23:00 in Shanghai
NO_RULES = ProjectPolicy(caps=[], quiet_hours=QuietHours(enabled=False))

ONE_SEND = """
name: {name}
status: {status}
tags: [marketing]
entry:
  stage: {{to: new}}
{extra}
steps:
  - id: hello
    send: {{channel: email, template: t}}
  - id: pause
    wait: 2d
  - id: bye
    send: {{channel: email, template: t2}}
"""


def one_send(name: str = "j", status: str = "active", extra: str = "", version: int = 1):
    return journey(ONE_SEND.format(name=name, status=status, extra=extra), version)


def stored(p: Plan) -> pd.DataFrame:
    """Enrollments as the store would hand them back (positive ids)."""
    e = p.enrollments.copy()
    e["id"] = e["id"].abs()
    return e[ENROLLMENT_COLUMNS]


def entering(n: int, **kw: object) -> Snapshot:
    c = customers_frame(n, timezone="UTC", **kw)
    return Snapshot(c, transitions=transitions_frame(c.index, "new", NOW - timedelta(hours=5)))


def test_goal_order_after_entry_converts_control_too() -> None:
    j = one_send(extra="holdout: {percent: 50}\ngoals:\n  - {id: bought, order: {}}")
    snap = entering(40)
    first = plan([j], snap, NOW, NO_RULES)
    orders = pd.DataFrame({"customer_id": [1, 2, 3], "ordered_at": [NOW - timedelta(days=1),
                           NOW + timedelta(hours=3), NOW + timedelta(days=1)], "amount": 20.0})
    later = NOW + timedelta(days=1, hours=1)
    second = plan([j], Snapshot(snap.customers, enrollments=stored(first), orders=orders),
                  later, NO_RULES)
    e = second.enrollments.set_index("customer_id")
    assert set(e.index) == {2, 3}  # the order before entry does not count
    assert (e["status"] == "converted").all() and (e["goal"] == "bought").all()
    assert e.loc[2, "converted_at"] == NOW + timedelta(hours=3)
    control = stored(first).set_index("customer_id")["is_control"]
    assert control.any() and not control.all()


def test_audience_is_checked_before_every_message() -> None:
    j = one_send(extra="audience: {field: clv_12m, gt: 100}")
    snap = entering(30)
    first = plan([j], snap, NOW, NO_RULES)
    entered = set(first.entered["customer_id"])
    assert entered == set(snap.customers.index[snap.customers["clv_12m"] > 100])
    cust = snap.customers.copy()
    cust["clv_12m"] = 50.0
    second = plan([j], Snapshot(cust, enrollments=stored(first)), NOW + timedelta(days=3), NO_RULES)
    assert second.messages.empty
    assert set(second.enrollments["exit_reason"]) == {"left_audience"}


def test_split_is_sticky_and_weighted() -> None:
    j = journey("""
name: ab
status: active
entry: {segment: {field: stage, eq: new}}
steps:
  - id: pick
    split:
      - {variant: a, weight: 70, goto: send_a}
      - {variant: b, weight: 30, goto: send_b}
  - id: send_a
    send: {channel: email, template: a}
    goto: done
  - id: send_b
    send: {channel: email, template: b}
  - id: done
    exit: {}
""")
    snap = Snapshot(customers_frame(20_000))
    p1 = plan([j], snap, NOW, NO_RULES)
    share_a = (p1.messages["template"] == "a").mean()
    assert 0.68 < share_a < 0.72
    p2 = plan([j], snap, NOW + timedelta(days=1), NO_RULES)  # a fresh draw gives the same
    assert p1.messages["template"].tolist() == p2.messages["template"].tolist()
    e = p1.enrollments.set_index("customer_id")
    m = p1.messages.set_index("customer_id")
    assert (e.loc[m.index, "variant"] == m["template"]).all()


def test_branch_routes_on_conditions_in_order() -> None:
    j = journey("""
name: br
status: active
entry: {segment: {field: stage, eq: new}}
steps:
  - id: route
    branch:
      - when: {field: clv_12m, gte: 200}
        goto: vip
      - when: {field: clv_12m, gte: 100}
        goto: mid
  - id: low
    send: {channel: email, template: low}
    goto: done
  - id: mid
    send: {channel: email, template: mid}
    goto: done
  - id: vip
    send: {channel: email, template: vip}
  - id: done
    exit: {}
""")
    cust = customers_frame(3, clv_12m=[50.0, 150.0, 250.0])
    m = plan([j], Snapshot(cust), NOW, NO_RULES).messages.set_index("customer_id")
    assert m["template"].to_dict() == {1: "low", 2: "mid", 3: "vip"}


@pytest.mark.parametrize("rule,status,reason,version", [
    ("move", "active", None, 2), ("drain", "exited", "drained", 1), ("stay", "active", None, 1)])
def test_edited_journey_follows_on_edit(
    rule: str, status: str, reason: str | None, version: int
) -> None:
    v1 = one_send(extra=f"on_edit: {rule}")
    snap = entering(5)
    first = plan([v1], snap, NOW, NO_RULES)
    v2 = journey(ONE_SEND.format(name="j", status="active", extra=f"on_edit: {rule}")
                 .replace("template: t2", "template: t2_new"), version=2)
    second = plan([v1, v2], Snapshot(snap.customers, enrollments=stored(first)),
                  NOW + timedelta(days=3), NO_RULES)
    e = second.enrollments
    assert (e["status"] == ("completed" if status == "active" else status)).all()
    if reason:
        assert (e["exit_reason"] == reason).all() and second.messages.empty
    else:
        assert (second.messages["journey_version"] == version).all()
        assert set(second.messages["template"]) == {"t2" if version == 1 else "t2_new"}


def test_move_ends_enrollments_whose_step_is_gone() -> None:
    v1 = one_send(extra="on_edit: move")
    snap = entering(3)
    first = plan([v1], snap, NOW, NO_RULES)
    v2 = journey(ONE_SEND.format(name="j", status="active", extra="on_edit: move")
                 .replace("id: bye", "id: farewell"), version=2)
    second = plan([v1, v2], Snapshot(snap.customers, enrollments=stored(first)),
                  NOW + timedelta(days=3), NO_RULES)
    assert set(second.enrollments["exit_reason"]) == {"step_removed"}


def test_stage_entry_respects_from_window_and_current_stage() -> None:
    j = journey("""
name: w
status: active
entry:
  stage: {to: churned, from: [at_risk]}
  within: 2d
steps:
  - id: hi
    send: {channel: email, template: t}
""")
    cust = customers_frame(4, stage=["churned", "churned", "churned", "active"])
    tr = pd.concat([transitions_frame([1], "churned", NOW - timedelta(days=1), frm="at_risk"),
                    transitions_frame([2], "churned", NOW - timedelta(days=1), frm="loyal"),
                    transitions_frame([3], "churned", NOW - timedelta(days=3), frm="at_risk"),
                    transitions_frame([4], "churned", NOW - timedelta(days=1), frm="at_risk")])
    p = plan([j], Snapshot(cust, transitions=tr), NOW, NO_RULES)
    assert p.entered["customer_id"].tolist() == [1]


def test_event_entry_and_interval_reentry() -> None:
    j = journey("""
name: ev
status: active
entry:
  event: {type: cart_abandoned}
  within: 1d
  reentry: {policy: interval, every: 7d}
steps:
  - id: hi
    send: {channel: email, template: t}
""")
    cust = customers_frame(2)
    ev = pd.DataFrame({"customer_id": [1, 2], "event_type": ["cart_abandoned", "page_view"],
                       "occurred_at": NOW - timedelta(hours=2)})
    first = plan([j], Snapshot(cust, events=ev), NOW, NO_RULES)
    assert first.entered["customer_id"].tolist() == [1]
    ev2 = pd.concat([ev, pd.DataFrame({"customer_id": [1], "event_type": ["cart_abandoned"],
                                       "occurred_at": [NOW + timedelta(days=3)]})])
    soon = plan([j], Snapshot(cust, events=ev2, enrollments=stored(first)),
                NOW + timedelta(days=3, hours=1), NO_RULES)
    assert soon.entered.empty  # a new event, but within 7 days of the last entry
    ev3 = pd.concat([ev, pd.DataFrame({"customer_id": [1], "event_type": ["cart_abandoned"],
                                       "occurred_at": [NOW + timedelta(days=8)]})])
    later = plan([j], Snapshot(cust, events=ev3, enrollments=stored(first)),
                 NOW + timedelta(days=8, hours=1), NO_RULES)
    assert later.entered["customer_id"].tolist() == [1]
    assert later.enrollments.loc[later.enrollments["is_new"], "entry_seq"].tolist() == [2]


@pytest.mark.parametrize("action,status,reason", [
    ("defer", "deferred", "frequency_cap:email/any/1per3d"),
    ("skip", "skipped", "frequency_cap:email/any/1per3d"),
    ("end", "skipped", "frequency_cap:email/any/1per3d")])
def test_frequency_cap_actions(action: str, status: str, reason: str) -> None:
    j = one_send(extra=f"contact_policy: {{frequency: {action}}}")
    policy = ProjectPolicy(caps=[Cap(channel="email", max=1, window=timedelta(days=3))],
                           quiet_hours=QuietHours(enabled=False))
    snap = entering(2)
    earlier = NOW - timedelta(days=1)
    ledger = pd.DataFrame({"customer_id": [1], "channel": ["email"], "tags": [["other"]],
                           "at": [earlier]})
    p = plan(
        [j], Snapshot(snap.customers, transitions=snap.transitions, ledger=ledger), NOW, policy
    )
    m = p.messages.set_index("customer_id")
    assert m.loc[2, "status"] == "pending"
    assert (m.loc[1, "status"], m.loc[1, "reason"]) == (status, reason)
    e = p.enrollments.set_index("customer_id")
    if action == "defer":
        assert m.loc[1, "send_after"] == earlier + timedelta(days=3)
        assert e.loc[1, "step_due_at"] == earlier + timedelta(days=3)  # the wait starts then
    elif action == "skip":
        assert e.loc[1, "status"] == "active" and e.loc[1, "current_step"] == "bye"
    else:
        assert (e.loc[1, "status"], e.loc[1, "exit_reason"]) == ("exited", reason)


def test_consent_and_suppression() -> None:
    j = one_send(extra="contact_policy: {consent: end}")
    snap = entering(4, consent_email=[True, False, True, True])
    snap.customers.loc[3, "email"] = None
    snap.customers["suppressed_email"] = [False, False, False, True]
    p = plan([j], snap, NOW, NO_RULES)
    m = p.messages.set_index("customer_id")
    assert m["reason"].to_dict() == {1: None, 2: "no_consent", 3: "no_address", 4: "suppressed"}
    e = p.enrollments.set_index("customer_id")
    assert e.loc[[2, 3, 4], "status"].eq("exited").all()


def test_project_caps_count_other_journeys_and_priority_wins() -> None:
    high = one_send("high", extra="priority: 9")
    low = one_send("low", extra="priority: 1")
    policy = ProjectPolicy(
        caps=[Cap(channel="email", tag="marketing", max=1, window=timedelta(days=1))],
        quiet_hours=QuietHours(enabled=False),
    )
    p = plan([low, high], entering(3), NOW, policy)
    m = p.messages.set_index(["journey", "customer_id"])["status"]
    assert (m.loc["high"] == "pending").all() and (m.loc["low"] == "deferred").all()


def test_quiet_hours_across_spring_forward_and_fall_back() -> None:
    zone = pd.Series(["America/New_York"] * 2)
    at = pd.Series(pd.to_datetime(["2026-03-08 06:30", "2026-11-01 05:30"])).astype(
        "datetime64[ns]"
    )
    # 01:30 local on both days; quiet 21:00-09:00 -> 09:00 local, which is EDT then EST
    out = clock.after_window(at, zone, time(21), time(9))
    assert out.tolist() == [pd.Timestamp("2026-03-08 13:00"), pd.Timestamp("2026-11-01 14:00")]
    assert not clock.in_window(out, zone, time(21), time(9)).any()


def test_quiet_hours_defer_in_each_customers_zone() -> None:
    j = one_send()
    policy = ProjectPolicy(caps=[], quiet_hours=QuietHours(start=time(21), end=time(8)))
    snap = entering(3)
    snap.customers["timezone"] = ["America/New_York", "Asia/Shanghai", "Australia/Sydney"]
    m = plan([j], snap, NOW, policy).messages.set_index("customer_id")
    # 15:00 UTC: 10:00 New York (allowed), 23:00 Shanghai, 02:00 Sydney (quiet)
    assert m.loc[1, "status"] == "pending"
    assert m.loc[2, "send_after"] == pd.Timestamp("2026-11-25 00:00")  # 08:00 CST
    assert m.loc[3, "send_after"] == pd.Timestamp("2026-11-24 21:00")  # 08:00 AEDT
    assert (m.loc[[2, 3], "reason"] == "quiet_hours").all()


def test_wait_until_local_time_on_weekdays_across_dst() -> None:
    # Friday 2026-10-30 12:00 UTC; next Monday 10:00 in London is after the clocks went back
    at = pd.Series([pd.Timestamp("2026-10-30 12:00")] * 2).astype("datetime64[ns]")
    zone = pd.Series(["Europe/London", "America/New_York"])
    out = clock.next_local_time(at, zone, time(10), [0])
    assert out.tolist() == [pd.Timestamp("2026-11-02 10:00"), pd.Timestamp("2026-11-02 15:00")]


def test_holdout_draw_is_stable_and_near_its_share() -> None:
    ids = np.arange(1, 100_001)
    u = hashing.uniform(ids, "welcome")
    assert abs((u < 0.1).mean() - 0.1) < 0.005
    assert np.array_equal(u, hashing.uniform(ids, "welcome"))
    assert not np.array_equal(u, hashing.uniform(ids, "winback"))


def test_global_control_group_is_never_messaged() -> None:
    j = one_send()
    policy = ProjectPolicy(
        caps=[], quiet_hours=QuietHours(enabled=False), global_control_percent=20
    )
    p = plan([j], entering(2000), NOW, policy)
    control = p.enrollments.set_index("customer_id")["is_control"]
    assert 0.17 < control.mean() < 0.23
    m = p.messages.set_index("customer_id")
    assert (m.loc[control[control].index, "reason"] == "control_group").all()
    assert (m.loc[control[~control].index, "status"] == "pending").all()


def test_paused_and_draft_journeys_do_nothing() -> None:
    snap = entering(5)
    first = plan([one_send()], snap, NOW, NO_RULES)
    later = NOW + timedelta(days=3)
    for status in ("paused", "draft"):
        p = plan([one_send(status=status)], Snapshot(snap.customers, transitions=snap.transitions,
                                                     enrollments=stored(first)), later, NO_RULES)
        assert p.enrollments.empty and p.messages.empty


def test_event_stage_and_condition_goals_keep_the_earliest() -> None:
    j = one_send(extra="""goals:
  - {id: clicked, event: {type: email_click}}
  - {id: loyal, stage: [loyal]}
  - {id: valuable, condition: {field: clv_12m, gte: 1000}}
exit_on_goal: false""")
    snap = entering(4)
    first = plan([j], snap, NOW, NO_RULES)
    cust = snap.customers.copy()
    cust.loc[2, ["stage", "stage_since"]] = ["loyal", NOW + timedelta(hours=2)]
    cust.loc[3, "clv_12m"] = 5000.0
    cust.loc[4, ["stage", "stage_since"]] = ["loyal", NOW + timedelta(hours=5)]
    events = pd.DataFrame({"customer_id": [1, 4, 2], "event_type": "email_click",
                           "occurred_at": [NOW + timedelta(hours=1), NOW + timedelta(hours=1),
                                           NOW - timedelta(hours=1)]})
    later = NOW + timedelta(hours=6)
    p = plan([j], Snapshot(cust, enrollments=stored(first), events=events), later, NO_RULES)
    e = p.enrollments.set_index("customer_id")
    assert e["goal"].to_dict() == {1: "clicked", 2: "loyal", 3: "valuable", 4: "clicked"}
    assert e.loc[3, "converted_at"] == later
    assert (e["status"] == "active").all()  # exit_on_goal: false records the goal and goes on


def test_local_time_arithmetic_agrees_with_pandas_around_every_transition() -> None:
    """The clock converts distinct (instant, zone) pairs with zoneinfo and leaves only results
    in a gap or an ambiguous hour to pandas: over instants every 20 minutes through both of
    2026's transitions in zones with DST (north and south, a 30-minute one) and without, the
    quiet-hour test, the move past quiet hours and the next local 01:30/02:30 (times that do
    not exist or come twice on transition days) equal pandas' own conversions."""
    zones = ["America/New_York", "Europe/London", "Australia/Sydney", "Australia/Lord_Howe",
             "Asia/Shanghai", "UTC", "America/Santiago"]
    days = ["2026-03-07", "2026-03-28", "2026-04-04", "2026-10-03", "2026-10-24", "2026-10-31"]
    instants = pd.DatetimeIndex(np.concatenate([
        pd.date_range(d, periods=3 * 72, freq="20min").to_numpy() for d in days]))
    at = pd.Series(np.repeat(instants.to_numpy(), len(zones))).astype("datetime64[ns]")
    tz = pd.Series(np.tile(zones, len(instants)), dtype=object)

    def local(utc: pd.Series, zone: pd.Series) -> pd.Series:
        return pd.Series([pd.Timestamp(u).tz_localize("UTC").tz_convert(z).tz_localize(None)
                          for u, z in zip(utc, zone)])

    inside = clock.in_window(at, tz, time(21), time(9))
    wall = local(at, tz)
    minutes = wall.dt.hour * 60 + wall.dt.minute
    assert inside.tolist() == ((minutes >= 21 * 60) | (minutes < 9 * 60)).tolist()

    moved = clock.after_window(at, tz, time(21), time(9))
    assert (moved >= at).all() and not clock.in_window(moved, tz, time(21), time(9)).any()
    moved_wall = local(moved, tz)
    changed = (moved != at).to_numpy()
    assert (moved_wall[changed].dt.strftime("%H:%M") == "09:00").all()

    # Every result through pandas' conversion (nonexistent times move forward, an ambiguous
    # one takes its first occurrence unless that lies before the input), as before the
    # zoneinfo path, must equal the mixed path.
    def all_through_pandas(ns: np.ndarray, zones: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(len(ns), dtype=np.int64), np.zeros(len(ns), dtype=bool)

    for target in (time(1, 30), time(2, 30), time(0, 0), time(9)):
        fast = clock.next_local_time(at, tz, target, [0, 2, 4])
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(clock, "_local_offsets", all_through_pandas)
            slow = clock.next_local_time(at, tz, target, [0, 2, 4])
        assert fast.equals(slow), target
        assert (fast >= at).all()
    slow_moved = None
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(clock, "_local_offsets", all_through_pandas)
        slow_moved = clock.after_window(at, tz, time(21), time(9))
    assert moved.equals(slow_moved)


def test_groups_match_pandas_groupby_in_order_and_content() -> None:
    """The engine's array grouping keeps pandas' groupby(sort=False) order (groups by first
    appearance, rows in order within each) and leaves out rows with a missing key: the order
    of the messages it plans depends on it."""
    rng = np.random.default_rng(3)
    n = 500
    journey = rng.choice(np.array(["welcome", "winback", None], dtype=object), n, p=[.5, .45, .05])
    version = rng.integers(1, 3, n)
    step = rng.choice(np.array(["a", "b", "c", None], dtype=object), n)
    frame = pd.DataFrame({"j": journey, "v": version, "s": step})
    want = frame.groupby(["j", "v", "s"], sort=False).groups
    got = _groups(journey, version, step)
    assert [k for k, _ in got] == list(want)
    for (_, rows), labels in zip(got, want.values(), strict=True):
        assert rows.tolist() == list(labels)
    assert _groups(np.array([], dtype=object)) == []


def test_a_categorical_journey_column_plans_what_strings_plan() -> None:
    """A replay hands its enrollments' journeys as a categorical (its own codes, with names
    of journeys no enrollment follows any more): the plan must not depend on it. Journey
    ``b`` is paused at the second run, so its enrollments must stay where they are."""
    a, b = one_send("a"), one_send("b", extra="holdout: {percent: 30}")
    snap = entering(30)
    before = stored(plan([a, b], snap, NOW, NO_RULES))
    later = NOW + timedelta(days=3)
    now_paused = [a, one_send("b", status="paused", extra="holdout: {percent: 30}")]
    as_strings = plan(now_paused, Snapshot(snap.customers, enrollments=before), later,
                      NO_RULES)
    coded = before.assign(journey=pd.Categorical(before["journey"],
                                                 categories=["gone", "b", "a"]))
    as_codes = plan(now_paused, Snapshot(snap.customers, enrollments=coded), later, NO_RULES)
    assert as_strings.messages.groupby("journey").size().to_dict() == {"a": 30}
    pd.testing.assert_frame_equal(as_codes.messages, as_strings.messages)
    pd.testing.assert_frame_equal(as_codes.enrollments.astype({"journey": "str"}),
                                  as_strings.enrollments.astype({"journey": "str"}))
