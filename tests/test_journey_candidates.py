"""An evaluation reads only the customers it can change (clm_core.journeys.candidates), and
plans exactly what it plans when it reads every customer: on a synthetic store scored day
after day, with the sample journeys and segment entries of every kind of condition."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from clm_core.db import tables as t
from clm_core.ingest.synthetic import load_synthetic
from clm_core.journeys import candidates, store
from clm_core.journeys.run import evaluate
from clm_core.journeys.store import journey_files
from clm_core.lifecycle.pipeline import LifecycleConfig, score
from tests.journey_helpers import journey, project

REPO = Path(__file__).resolve().parent.parent

# Segment entries that exercise each kind of filter: numbers (ordering, integer equality),
# strings, booleans, existence, a float compared for equality (left out of the SQL), and a
# re-entry on rematch, which must keep reading customers until they stop matching.
EXTRA = {
    "lapsing": """
name: lapsing
status: active
entry:
  segment:
    all:
      - {field: p_alive, lt: 0.6}
      - {field: n_orders, gte: 2}
      - {field: rfm_segment, exists: true}
      - any: [{field: clv_12m, eq: 0}, {field: clv_12m, gt: 0}]
  reentry: {policy: rematch}
exit_when_audience_lost: true
audience: {field: consent_email, eq: true}
steps:
  - id: hello
    send: {channel: email, template: welcome_1}
  - id: pause
    wait: 20d
""",
    "big_spenders": """
name: big_spenders
status: active
entry:
  segment:
    any:
      - {field: total_spend, gt: 400}
      - {field: stage, in: [loyal, reactivated]}
  reentry: {policy: interval, every: 30d}
goals:
  - {id: ordered, order: {}}
steps:
  - id: pause
    wait: 5d
  - id: hello
    send: {channel: email, template: welcome_1}
""",
    # entered by a stage move; leaves when consent is withdrawn or the stage slips, long
    # after its step was last due: only those clauses can find such customers
    "settled": """
name: settled
status: active
on_edit: move
entry:
  stage: {to: active}
  within: 30d
  reentry: {policy: once}
exit_when_audience_lost: true
audience: {field: consent_email, eq: true}
goals:
  - {id: came_back, stage: [reactivated]}  # a stage no journey is entered by
steps:
  - id: hello
    send: {channel: email, template: welcome_1}
  - id: pause
    wait: 200d
""",
}

ANYONE = """
name: anyone
status: active
entry:
  segment: {not: {field: p_alive, gte: 0.6}}
  reentry: {policy: rematch}
steps:
  - id: hello
    send: {channel: email, template: welcome_1}
"""


IN_PARTS = "[journeys]\ncustomers_per_pass = 40\n"


def _plans_equal(a: Any, b: Any) -> None:
    """The same plan: the same rows, with the same ids for stored enrollments. A new
    enrollment's id (and its messages' keys) is a placeholder numbered in the order the
    customers were read, which a database need not keep from one query to the next."""
    for name, keys, loose in (
            ("enrollments", ["journey", "customer_id", "entry_seq"], ["id"]),
            ("messages", ["journey", "customer_id", "step_id", "channel"],
             ["idempotency_key", "enrollment_id"])):
        left, right = (getattr(p.plan, name).sort_values(keys).reset_index(drop=True)
                       for p in (a, b))
        pd.testing.assert_frame_equal(left.drop(columns=loose), right.drop(columns=loose))
        id_col = loose[-1]
        stored = left[id_col] > 0
        assert stored.equals(right[id_col] > 0)
        pd.testing.assert_frame_equal(left[stored], right[stored])


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of customers each evaluation from now on reads, in order."""
    read: list[int] = []
    real = store.load_customers
    monkeypatch.setattr(store, "load_customers",
                        lambda *a, **k: read.append(len(df := real(*a, **k))) or df)
    return read


def _narrowed(engine: sa.Engine, settings: Any, at: datetime,
              monkeypatch: pytest.MonkeyPatch) -> Any:
    """A dry-run evaluation at ``at`` reading only who may change, checked to plan what one
    reading every customer plans (that one runs second)."""
    some = evaluate(engine, settings, at, dry_run=True)
    with monkeypatch.context() as m:
        m.setattr(store, "entry_filters", lambda *a: None)  # every customer
        every = evaluate(engine, settings, at, dry_run=True)
    _plans_equal(some, every)
    return some


@pytest.mark.parametrize("every_customer", [False, True], ids=["narrowed", "not-narrowed"])
def test_reading_only_changeable_customers_plans_what_reading_all_plans(
        engine: sa.Engine, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        every_customer: bool) -> None:
    texts = {p.stem: p.read_text(encoding="utf-8") for p in journey_files(REPO / "journeys")}
    texts.update(EXTRA)
    if every_customer:  # a segment no SQL filter can narrow: every customer is read
        texts["anyone"] = ANYONE
    # the same project evaluated in parts of at most 40 customers (store.Scope.parts)
    parted = project(tmp_path, db_url, texts, toml=IN_PARTS)
    settings = project(tmp_path, db_url, texts)
    load_synthetic(engine, 500, seed=5)
    with engine.connect() as conn:
        last = pd.Timestamp(conn.scalar(sa.select(sa.func.max(t.orders.c.ordered_at)))).date()
    read: list[int] = []
    real = store.load_customers

    def counting(*args: Any, **kwargs: Any) -> pd.DataFrame:
        df = real(*args, **kwargs)
        read.append(len(df))
        return df

    monkeypatch.setattr(store, "load_customers", counting)
    rules = LifecycleConfig(rules=REPO / "journeys" / "lifecycle.yaml")
    days = [last - timedelta(days=d) for d in (120, 90, 75, 60, 40, 20, 5, 0)]
    narrowed, parts = [], []
    rng = np.random.default_rng(7)
    for k, day in enumerate(days):
        if k == 3:  # an edit (enrollments move to the new version) and a pause
            texts["settled"] = texts["settled"].replace("wait: 200d", "wait: 199d")
            texts["lapsing"] = texts["lapsing"].replace("status: active", "status: paused")
            project(tmp_path, db_url, texts)
        if k == 5:
            texts["lapsing"] = texts["lapsing"].replace("status: paused", "status: active")
            project(tmp_path, db_url, texts)
        with engine.begin() as conn:  # some customers withdraw their consent to email
            ids = conn.scalars(sa.select(t.customers.c.id)).all()
            gone = [int(i) for i in rng.choice(ids, size=len(ids) // 25, replace=False)]
            conn.execute(sa.update(t.customers).where(t.customers.c.id.in_(gone))
                         .values(consent_email=False))
        score(engine, rules, as_of=day)
        now = datetime.combine(day + timedelta(days=1), datetime.min.time()) + timedelta(hours=6)
        read.clear()
        with monkeypatch.context() as m:  # narrowed whatever the share that may change
            m.setattr(store, "_most_may_change", lambda *a: False)
            some = evaluate(engine, settings, now, dry_run=True)
        with monkeypatch.context() as m:
            m.setattr(store, "entry_filters", lambda *a: None)  # every customer
            every = evaluate(engine, settings, now, dry_run=True)
        _plans_equal(some, every)
        assert read[1] == read[0] if every_customer else read[1] >= read[0]
        narrowed.append(read[0] < read[1])
        in_parts = evaluate(engine, parted, now, dry_run=True)
        _plans_equal(in_parts, every)
        parts.append(in_parts.parts)
        # the parts hold at most 40 customers each, and together whom one pass reads
        assert max(read[2:]) <= 40 and sum(read[2:]) in (read[0], read[1]), read
        # on to the next day, written part by part: what the one-pass plan holds
        done = evaluate(engine, parted, now)
        assert done.plan is None if done.parts > 1 else done.plan is not None
        assert done.written is not None and every.plan is not None
        assert done.written.enrollments_created == int(every.plan.enrollments["is_new"].sum())
        assert done.written.messages_created == len(every.plan.messages)
        assert done.written.enrollments_updated == int((~every.plan.enrollments["is_new"]).sum())
    with engine.connect() as conn:
        enrolled = conn.scalar(sa.select(sa.func.count()).select_from(t.journey_enrollments))
        sent = conn.scalar(sa.select(sa.func.count()).select_from(t.messages))
    assert enrolled > 100 and sent > 100  # the journeys did work over the days
    if not every_customer:
        assert sum(narrowed) >= len(days) // 2, narrowed  # and reading less happened
    assert sum(p > 1 for p in parts) >= len(days) // 2, parts  # and parts were planned apart


def _filter_sql(text: str) -> str | None:
    j = journey(text)
    found = candidates.entry_filters([j], store.field_column)
    if found is None:
        return None
    return str(sa.and_(*found).compile(compile_kwargs={"literal_binds": True}))


def test_filters_leave_out_what_sql_would_judge_otherwise() -> None:
    base = EXTRA["big_spenders"]
    sql = _filter_sql(base)
    assert sql is not None
    assert "total_spend > 400" in sql and "IN ('loyal', 'reactivated')" in sql
    # an "any" with a part SQL cannot judge (float equality) cannot be narrowed at all...
    with_float = base.replace("{field: total_spend, gt: 400}", "{field: clv_12m, eq: 0.5}")
    assert _filter_sql(with_float) is None
    # ... an integer's equality it can
    sql = _filter_sql(base.replace("{field: total_spend, gt: 400}", "{field: n_orders, eq: 3}"))
    assert sql is not None and "n_orders = 3" in sql
    # in "all", the float equality is dropped and the rest kept
    sql = _filter_sql(EXTRA["lapsing"])
    assert sql is not None and "clv_12m" not in sql and "n_orders >= 2" in sql
    # "all" keeps the parts it can judge; a part on a time or a derived field is dropped
    sql = _filter_sql(EXTRA["lapsing"].replace(
        "- {field: rfm_segment, exists: true}", "- {field: days_in_stage, gt: 3}"))
    assert sql is not None and "p_alive < 0.6" in sql and "days_in_stage" not in sql
    assert "consent_email" in sql  # the audience narrows too
    assert _filter_sql(EXTRA["big_spenders"].replace(
        "- {field: total_spend, gt: 400}", "- {not: {field: total_spend, lte: 400}}")) is None



ONE_CHANGE = """
name: one_change
status: active
entry:
  stage: {to: new}
  reentry: {policy: rematch}
exit_when_audience_lost: true
audience: {field: consent_email, eq: true}
goals:
  - {id: loyal, stage: [loyal]}
  - {id: ordered, order: {}}
steps:
  - id: hello
    send: {channel: email, template: welcome_1}
  - id: pause
    wait: 30d
"""


def _change(engine: sa.Engine, kind: str, ids: list[int], at: datetime) -> None:
    """One kind of change to these customers, written in place, no transition recorded."""
    s, c = t.customer_scores, t.customers
    with engine.begin() as conn:
        if kind == "stage goal":
            conn.execute(sa.update(s).where(s.c.customer_id.in_(ids))
                         .values(stage="loyal", stage_since=at))
        elif kind == "stage left":  # out of the entry stage: the rematch memory must see it
            conn.execute(sa.update(s).where(s.c.customer_id.in_(ids))
                         .values(stage="active", stage_since=at))
        elif kind == "consent":
            conn.execute(sa.update(c).where(c.c.id.in_(ids)).values(consent_email=False))
        else:
            conn.execute(sa.insert(t.orders), [
                {"external_id": f"late-{i}", "customer_id": i, "ordered_at": at,
                 "amount": 20, "status": "completed"} for i in ids])


@pytest.mark.parametrize("kind", ["stage goal", "stage left", "consent", "order goal"])
def test_each_change_alone_is_found_long_after_the_last_step(
        engine: sa.Engine, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        kind: str) -> None:
    """Nothing is due and no move is in an entry window: only the one kind of change can
    make the evaluation read a customer, and it reads exactly those it changed."""
    from tests.journey_helpers import customers_frame, store_customers, store_transitions

    text = ONE_CHANGE if kind != "stage goal" else \
        ONE_CHANGE.replace("policy: rematch", "policy: once")  # the stage goal alone
    settings = project(tmp_path, db_url, {"one_change": text})
    now = datetime(2026, 11, 24, 15, 0)
    ids = store_customers(engine, customers_frame(30, timezone="UTC"), now)
    store_transitions(engine, ids, "new", now - timedelta(days=1))
    assert evaluate(engine, settings, now).written.enrollments_created == 30
    changed = [int(i) for i in ids.iloc[::3]]
    _change(engine, kind, changed, now + timedelta(days=2))
    later = now + timedelta(days=10)  # the transitions are out of the entry window by then
    read = _count_reads(monkeypatch)
    some = _narrowed(engine, settings, later, monkeypatch)
    touched = some.plan.enrollments
    assert sorted(touched["customer_id"]) == sorted(changed)
    if kind == "stage left":
        assert touched["unmatched_at"].notna().all() and (touched["status"] == "active").all()
    else:
        assert set(touched["status"]) == {"exited" if kind == "consent" else "converted"}
    assert read == [len(changed), 30]
    # the morning after the first scoring, every customer has just moved: everyone is read
    read.clear()
    evaluate(engine, settings, now, dry_run=True)
    assert read == [30]


BY_SEGMENT = """
name: by_segment
status: active
entry:
  segment: {field: stage, eq: new}
  reentry: POLICY
steps:
  - id: hello
    send: {channel: email, template: welcome_1}
"""


@pytest.mark.parametrize("policy", ["once", "interval", "rematch"])
def test_who_the_re_entry_policy_keeps_out_is_not_read(
        engine: sa.Engine, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        policy: str) -> None:
    """A customer a segment holds for is read only while the journey's re-entry policy may
    let them in: never again after entering once, not within ``every`` of the last entry,
    not while enrolled; and under rematch again after they stopped matching. What is planned
    is what reading everyone plans."""
    from tests.journey_helpers import customers_frame, store_customers

    rule = {"once": "{policy: once}", "interval": "{policy: interval, every: 3d}",
            "rematch": "{policy: rematch}"}[policy]
    settings = project(tmp_path, db_url, {"by_segment": BY_SEGMENT.replace("POLICY", rule)})
    start = datetime(2026, 11, 24, 15, 0)
    ids = store_customers(engine, customers_frame(30, timezone="UTC"), start)
    read = _count_reads(monkeypatch)

    def night(at: datetime) -> Any:
        """The narrowed plan, checked against reading everyone, then written."""
        read.clear()
        some = _narrowed(engine, settings, at, monkeypatch)
        evaluate(engine, settings, at)
        return some.plan.enrollments

    assert len(night(start)) == 30 and read[0] == 30
    with engine.connect() as conn:  # one send and done: nothing active stays
        assert set(conn.scalars(sa.select(t.journey_enrollments.c.status))) == {"completed"}
    moved = [int(i) for i in ids.iloc[::3]]  # a third stop matching for a day, then match again
    s = t.customer_scores
    for day, stage in ((1, "active"), (2, "new")):
        with engine.begin() as conn:
            conn.execute(sa.update(s).where(s.c.customer_id.in_(moved)).values(stage=stage))
        night(start + timedelta(days=day))
        if policy != "rematch":  # entered within 3 days or once: no one can enter, no one read
            assert read[0] == 0, (day, read)
    entered = night(start + timedelta(days=4))
    with engine.connect() as conn:
        entries = dict(conn.execute(sa.select(t.journey_enrollments.c.customer_id,
                                              sa.func.count()).group_by("customer_id")).all())
    if policy == "once":
        assert read[0] == 0 and entered.empty and set(entries.values()) == {1}
    elif policy == "interval":  # everyone again, three days after their entry
        assert read[0] == 30 and len(entered) == 30 and set(entries.values()) == {2}
    else:  # those who stopped matching and came back entered again, on day 2
        assert sorted(c for c, n in entries.items() if n == 2) == sorted(moved)
        assert set(entries.values()) == {1, 2}
