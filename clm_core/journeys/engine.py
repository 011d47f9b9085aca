"""One evaluation of all journeys at time ``now``: a pure function from a ``Snapshot`` of the
database to a ``Plan`` of enrollment changes and outbox messages.

Order of work, each step vectorised over customers (loops run over journeys and steps only):

1. enrollments of edited journeys follow the journey's ``on_edit`` policy;
2. active enrollments reach goals (converted) or lose the audience (exited);
3. due enrollments advance step by step (waits, branches, splits, sends, exits) until each one
   waits for a later time or ends; the sends of each round pass the contact policy together;
4. customers who trigger a journey enter it, subject to the audience and the re-entry policy,
   draw their holdout from a stable hash, and advance at once (someone who finished in step 3
   may re-enter here, so a second run at the same time finds nothing left to do);
5. each customer's latest enrollment remembers when they stopped matching the trigger (for
   re-entry on rematch).

Nothing here touches the database, so ``clm plan`` and the scheduled run share every decision.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from clm_core.journeys import clock, hashing
from clm_core.journeys.fields import ENGAGEMENT_EVENTS
from clm_core.journeys.loader import END, CompiledJourney
from clm_core.journeys.model import (
    WEEKDAYS,
    BranchStep,
    ExitStep,
    Goal,
    ProjectPolicy,
    SendStep,
    SplitStep,
    WaitStep,
)
from clm_core.journeys.policy import ContactPolicy, rules_for

ACTIVE = "active"
DONE = ("completed", "exited", "converted")
ENROLLMENT_COLUMNS = ["id", "journey", "journey_version", "customer_id", "entry_seq", "status",
                      "is_control", "variant", "current_step", "step_due_at", "entered_at",
                      "exited_at", "exit_reason", "converted_at", "goal", "trigger_at",
                      "unmatched_at"]
TIME_COLUMNS = ["step_due_at", "entered_at", "exited_at", "converted_at", "trigger_at",
                "unmatched_at"]
MESSAGE_COLUMNS = ["idempotency_key", "enrollment_id", "customer_id", "journey",
                   "journey_version", "step_id", "channel", "template", "coupon", "tags",
                   "status", "reason", "send_after"]


def _ts(s: pd.Series) -> pd.Series:
    return pd.to_datetime(s).astype("datetime64[ns]")


# Names longer than this go into the outbox key as a prefix and a hash, so the key is at most
# 40 + 2 + 10 (version) + 1 + 40 + 2 + 20 (enrollment id) = 115 characters: it fits the
# String(128) column on PostgreSQL whatever the names (shorter names are kept as they are).
KEY_PART_MAX = 40
KEY_MAX = 128


def key_part(name: str) -> str:
    """``name`` itself when short; else its first characters, ``~`` and 16 hex digits of its
    BLAKE2b hash (distinct names stay distinct; the key still shows what it is about)."""
    if len(name) <= KEY_PART_MAX:
        return name
    digest = hashlib.blake2b(name.encode(), digest_size=8).hexdigest()
    return f"{name[:KEY_PART_MAX - 17]}~{digest}"


def message_keys(msgs: pd.DataFrame) -> pd.Series:
    """The outbox key of each message: journey, version, step and enrollment."""
    parts = {c: msgs[c].map({v: key_part(str(v)) for v in pd.unique(msgs[c])})
             for c in ("journey", "step_id")}
    return (parts["journey"] + "/v" + msgs["journey_version"].astype(str) + "/"
            + parts["step_id"] + "/e" + msgs["enrollment_id"].astype(str))


def empty_enrollments() -> pd.DataFrame:
    df = pd.DataFrame({c: pd.Series(dtype=object) for c in ENROLLMENT_COLUMNS})
    for c in TIME_COLUMNS:
        df[c] = df[c].astype("datetime64[ns]")
    return df.astype({"id": "int64", "journey_version": "int64", "customer_id": "int64",
                      "entry_seq": "int64", "is_control": bool})


@dataclass
class Snapshot:
    """What one evaluation reads.

    customers: index customer_id; the condition fields plus ``tz`` and, per channel,
      consent_email/consent_sms, email/phone and suppressed_email/suppressed_sms.
    enrollments: the latest enrollment per (journey, customer), ENROLLMENT_COLUMNS.
    transitions: customer_id, from_stage, to_stage, transitioned_at (recent ones).
    tier_transitions: customer_id, from_tier, to_tier, transitioned_at (recent ones).
    events: customer_id, event_type, occurred_at (recent ones).
    orders: customer_id, ordered_at, amount (since the oldest active enrollment).
    ledger: customer_id, channel, tags, at: messages planned or sent (for caps).
    withdrawn_topics: customer_id, channel, topic: the topics each customer currently withdrew
      from on a channel (preferences page, consent ledger); a message tagged with one is skipped.
    """

    customers: pd.DataFrame
    enrollments: pd.DataFrame = field(default_factory=empty_enrollments)
    transitions: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(
            {
                "customer_id": pd.Series(dtype="int64"),
                "from_stage": pd.Series(dtype=object),
                "to_stage": pd.Series(dtype=object),
                "transitioned_at": pd.Series(dtype="datetime64[ns]"),
            }
        )
    )
    tier_transitions: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        {"customer_id": pd.Series(dtype="int64"), "from_tier": pd.Series(dtype=object),
         "to_tier": pd.Series(dtype=object), "transitioned_at": pd.Series(dtype="datetime64[ns]")}))
    events: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        {"customer_id": pd.Series(dtype="int64"), "event_type": pd.Series(dtype=object),
         "occurred_at": pd.Series(dtype="datetime64[ns]")}))
    orders: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        {"customer_id": pd.Series(dtype="int64"), "ordered_at": pd.Series(dtype="datetime64[ns]"),
         "amount": pd.Series(dtype=float)}))
    ledger: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        {"customer_id": pd.Series(dtype="int64"), "channel": pd.Series(dtype=object),
         "tags": pd.Series(dtype=object), "at": pd.Series(dtype="datetime64[ns]")}))
    withdrawn_topics: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        {"customer_id": pd.Series(dtype="int64"), "channel": pd.Series(dtype=object),
         "topic": pd.Series(dtype=object)}))


@dataclass
class Plan:
    """The outcome of one evaluation: enrollments created or changed, messages to write."""

    now: pd.Timestamp
    enrollments: pd.DataFrame  # ENROLLMENT_COLUMNS + is_new; new ones have negative ids
    messages: pd.DataFrame  # MESSAGE_COLUMNS (+ enrollment_id negative for new enrollments)
    entered: pd.DataFrame  # journey, customer_id, is_control of new enrollments


def merged(plans: Sequence[Plan]) -> Plan:
    """Plans of disjoint sets of customers at the same ``now`` as one plan. Each numbers its
    new enrollments -1, -2, ...; they are renumbered to stay apart, their messages with them."""
    if len(plans) == 1:
        return plans[0]
    enrollments, messages, shift = [], [], 0
    for p in plans:
        e, m = p.enrollments.copy(), p.messages.copy()
        if len(e):
            e.loc[e["is_new"], "id"] += shift
        if len(m) and "enrollment_id" in m:
            m.loc[m["enrollment_id"] < 0, "enrollment_id"] += shift
        shift = min(shift, int(e.loc[e["is_new"], "id"].min()) if e["is_new"].any() else 0)
        enrollments.append(e)
        messages.append(m)
    return Plan(plans[0].now, _stacked(enrollments), _stacked(messages),
                _stacked([p.entered for p in plans]))


def _stacked(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Frames one under the other, each column with the type it has in the frames that have
    rows (a part with none, or with only missing values, gives a column the generic type)."""
    out = pd.concat(frames, ignore_index=True)
    for col in out.columns:
        kinds = {f[col].dtype for f in frames if col in f and f[col].notna().any()}
        if len(kinds) == 1 and out[col].dtype not in kinds:
            out[col] = out[col].astype(kinds.pop())
    return out


def _plain(value: object) -> object:
    """A value as numpy stores it in a column: Series to arrays, timestamps to datetime64."""
    if isinstance(value, (pd.Series, pd.Index)):
        return value.to_numpy()
    if value is pd.NaT:
        return np.datetime64("NaT", "ns")
    if isinstance(value, pd.Timestamp):
        return value.to_datetime64()
    return value


def _isin(values: np.ndarray, wanted: object) -> np.ndarray:
    """Membership over an object column (missing values and mixed types allowed)."""
    return pd.Index(values, dtype=object).isin(list(wanted))  # type: ignore[call-overload]


def _groups(*columns: np.ndarray) -> list[tuple[tuple[Any, ...], np.ndarray]]:
    """Positions of the rows per distinct combination of ``columns`` (missing values left
    out), groups in order of first appearance and rows in order within each: pandas'
    ``groupby(sort=False).groups`` on arrays, without its fixed cost per call, which a step
    pays several times per evaluation."""
    n = len(columns[0]) if columns else 0
    if not n:
        return []
    key = np.zeros(n, dtype=np.int64)
    kept = np.ones(n, dtype=bool)
    for col in columns:
        code, uniq = pd.factorize(col)
        kept &= code >= 0
        key = key * (len(uniq) + 1) + code
    rows = np.flatnonzero(kept)
    group, _ = pd.factorize(key[rows])
    order = np.argsort(group, kind="stable")
    bounds = np.flatnonzero(np.diff(group[order])) + 1
    parts = np.split(rows[order], bounds)
    return [(tuple(c[p[:1]].tolist()[0] for c in columns), p) for p in parts]


class _Run:
    """One evaluation. The enrollments are held as one numpy array per column (``self.e``),
    row positions as the row ids: every step reads and writes subsets of rows many times, and a
    DataFrame's label-based ``loc`` reads and writes (string columns in particular) cost
    milliseconds each where an array's take and put cost microseconds."""

    def __init__(self, journeys: Sequence[CompiledJourney], snap: Snapshot, now: pd.Timestamp,
                 policy: ProjectPolicy):
        self.now = now
        self.now64 = now.to_datetime64()
        self.by_key = {j.key: j for j in journeys}
        latest: dict[str, CompiledJourney] = {}
        for j in journeys:
            if j.name not in latest or j.version > latest[j.name].version:
                latest[j.name] = j
        self.latest = latest
        self.running = {n for n, j in latest.items() if j.spec.status == "active"}
        self.snap = snap
        self.cust = snap.customers
        self.policy = policy
        enr = snap.enrollments
        self.columns = list(enr.columns)
        self.e: dict[str, np.ndarray] = {}
        self._codes: tuple[np.ndarray, dict[str, int]] | None = None
        if isinstance(enr["journey"].dtype, pd.CategoricalDtype):  # the codes come with it
            cat = enr["journey"].cat
            self._codes = (cat.codes.to_numpy(np.intp, copy=True),
                           {str(n): k for k, n in enumerate(cat.categories)})
        for c in self.columns:
            col = enr[c]
            if c in TIME_COLUMNS:
                self.e[c] = _ts(col).to_numpy("datetime64[ns]", copy=True)
            elif col.dtype.kind in "biuf":
                self.e[c] = col.to_numpy(copy=True)
            else:
                self.e[c] = col.to_numpy(dtype=object, copy=True)
        self.e["is_new"] = np.zeros(len(enr), dtype=bool)
        self.e["changed"] = np.zeros(len(enr), dtype=bool)
        self.contact = ContactPolicy(rules_for(list(latest.values()), policy.caps,
                                               policy.quiet_hours),
                                     self.cust, snap.ledger, self.now, snap.withdrawn_topics)
        self.messages: list[pd.DataFrame] = []
        self._sources: dict[tuple[str, object], pd.DataFrame] = {}
        self._journey_fields: dict[tuple[str, int], set[str]] = {}

    # --- helpers --------------------------------------------------------------------------

    def _set(self, idx: pd.Index | np.ndarray, **values: object) -> None:
        if len(idx) == 0:
            return
        pos = np.asarray(idx, dtype=np.intp)
        for k, v in values.items():
            self.e[k][pos] = _plain(v)
        self.e["changed"][pos] = True

    def _end(self, idx: pd.Index | np.ndarray, status: str, reason: str) -> None:
        self._set(idx, status=status, exit_reason=reason, exited_at=self.now, current_step=None,
                  step_due_at=pd.NaT)

    def _col(self, name: str, idx: pd.Index | np.ndarray) -> pd.Series:
        """Column ``name`` at rows ``idx``, indexed by them."""
        return pd.Series(self.e[name][np.asarray(idx, dtype=np.intp)], index=idx)

    def _rows(self, idx: pd.Index, columns: Iterable[str] | None = None) -> pd.DataFrame:
        """Customer rows for enrollments ``idx`` (index aligned with idx); only ``columns``
        when given (the customers frame is wide, and a condition reads a few of its fields)."""
        src = self.cust if columns is None else self.cust[
            [c for c in self.cust.columns if c in set(columns)]]
        rows = src.reindex(self.e["customer_id"][np.asarray(idx, dtype=np.intp)])
        rows.index = idx
        return rows

    def _fields(self, j: CompiledJourney) -> set[str]:
        """The customer fields ``j``'s conditions read (computed once per evaluation)."""
        if j.key not in self._journey_fields:
            self._journey_fields[j.key] = j.fields
        return self._journey_fields[j.key]

    def _journey_codes(self) -> tuple[np.ndarray, dict[str, int]]:
        """Each enrollment's journey as a small integer, and the code of each name: one
        factorisation per evaluation (and after entries), not a string comparison over every
        enrollment per journey."""
        if self._codes is None:
            code, names = pd.factorize(self.e["journey"])
            self._codes = (code, {str(n): k for k, n in enumerate(names)})
        return self._codes

    def _active(self) -> np.ndarray:
        return np.asarray(self.e["status"] == ACTIVE, dtype=bool)

    # --- 1. versions ------------------------------------------------------------------------

    def versions(self) -> None:
        code, which = self._journey_codes()
        version = self.e["journey_version"]
        # the running version of each enrollment's journey (-1: not running): one comparison
        # finds the enrollments on another version, usually none
        current = np.full(len(which) + 1, -1, dtype=np.int64)
        for name, k in which.items():
            if name in self.running:
                current[k] = self.latest[name].version
        stale = self._active() & (current[code] >= 0) & (version != current[code])
        if not stale.any():
            return
        for name in self.running:
            latest = self.latest[name]
            if name not in which:
                continue
            idx = np.flatnonzero(stale & (code == which[name]))
            if not len(idx):
                continue
            rule = latest.spec.on_edit
            if rule == "drain":
                self._end(idx, "exited", "drained")
            elif rule == "move":
                known = _isin(self.e["current_step"][idx], [*latest.spec.step_ids(), END])
                self._set(idx[known], journey_version=latest.version)
                self._end(idx[~known], "exited", "step_removed")
            else:
                kept = [v for (n, v) in self.by_key if n == name]
                have = np.isin(self.e["journey_version"][idx], kept)
                self._end(idx[~have], "exited", "version_missing")

    # --- 2. goals and audience -------------------------------------------------------------

    def goals(self) -> None:
        active = pd.Index(np.flatnonzero(self._active()))
        for (name, version), at in _groups(self.e["journey"][active],
                                           self.e["journey_version"][active]):
            idx = active[at]
            if name not in self.running or (name, version) not in self.by_key:
                continue
            j = self.by_key[(name, version)]
            missing = self.cust.index.get_indexer(self.e["customer_id"][np.asarray(idx)]) < 0
            self._end(idx[missing], "exited", "no_scores")
            idx = idx[~missing]
            if not len(idx):
                continue
            rows = self._rows(idx, self._fields(j) | {"stage", "stage_since"})
            entered = self._col("entered_at", idx)
            first = np.full(len(idx), np.datetime64("NaT", "ns"))
            which = np.full(len(idx), None, dtype=object)
            for goal in j.spec.goals:
                hit = self._goal_time(goal, j, idx, rows, entered).to_numpy("datetime64[ns]")
                better = ~np.isnat(hit) & (np.isnat(first) | (hit < first))
                first[better] = hit[better]
                which[better] = goal.id
            reached = ~np.isnat(first) & pd.isna(self.e["goal"][np.asarray(idx)])
            r_idx = idx[reached]
            self._set(r_idx, goal=which[reached], converted_at=first[reached])
            if j.spec.exit_on_goal:
                self._end(r_idx, "converted", "goal")
            if j.audience is not None and j.spec.exit_when_audience_lost:
                still = self.e["status"][np.asarray(idx)] == ACTIVE
                lost = ~j.audience.mask(rows).to_numpy(bool) & still
                self._end(idx[lost], "exited", "left_audience")

    def _goal_time(self, goal: Goal, j: CompiledJourney, idx: pd.Index, rows: pd.DataFrame,
                   entered: pd.Series) -> pd.Series:
        out = pd.Series(pd.NaT, index=idx, dtype="datetime64[ns]")
        if goal.condition is not None:
            out[j.goal_conditions[goal.id].mask(rows).to_numpy(bool)] = self.now
            return out
        if goal.stage is not None:
            since = _ts(rows["stage_since"]).fillna(self.now)
            ok = rows["stage"].isin(goal.stage) & (since > entered)
            out[ok.to_numpy(bool)] = since[ok]
            return out
        src = self._goal_source(goal)
        left = pd.DataFrame({"row": np.asarray(idx, dtype=np.int64),
                             "customer_id": self.e["customer_id"][np.asarray(idx, dtype=np.intp)]
                             .astype(np.int64),
                             "entered": entered.to_numpy("datetime64[ns]")})
        # the first order or event strictly after entry, per enrollment (both sides sorted by
        # time, matched within the customer): no pair of every enrollment with every order
        left = left[left["entered"].notna()].sort_values("entered", kind="stable")
        hits = pd.merge_asof(left, src, left_on="entered", right_on="t", by="customer_id",
                             direction="forward", allow_exact_matches=False)
        hits = hits[hits["t"].notna() & (hits["t"] <= self.now)]
        out.loc[hits["row"].to_numpy()] = hits["t"].to_numpy()
        return out

    def _goal_source(self, goal: Goal) -> pd.DataFrame:
        """customer_id and t of the orders or events that reach ``goal``, sorted by t (built
        once per evaluation and goal kind)."""
        if goal.order is not None:
            key: tuple[str, object] = ("order", goal.order.min_amount)
        else:
            assert goal.event is not None  # a goal is exactly one of order, stage, event, condition
            key = ("event", goal.event.type)
        if key not in self._sources:
            if goal.order is not None:
                src = self.snap.orders
                src = src.loc[src["amount"] >= goal.order.min_amount, ["customer_id", "ordered_at"]]
                t_col = "ordered_at"
            else:
                src = self.snap.events
                src = src.loc[src["event_type"] == key[1], ["customer_id", "occurred_at"]]
                t_col = "occurred_at"
            frame = pd.DataFrame({"customer_id": src["customer_id"].to_numpy(np.int64),
                                  "t": _ts(src[t_col]).to_numpy("datetime64[ns]")})
            self._sources[key] = frame[frame["t"].notna()].sort_values("t", kind="stable")
        return self._sources[key]

    # --- 4. entries -------------------------------------------------------------------------

    def _triggers(self, j: CompiledJourney) -> pd.DataFrame:
        """customer_id and trigger_at of customers who trigger ``j`` now."""
        entry = j.spec.entry
        since = self.now - entry.within
        if entry.tier is not None:
            return self._tier_triggers(entry.tier.to, entry.tier.from_, since)
        if entry.stage is not None:
            tr = self.snap.transitions
            ok = (tr["to_stage"] == entry.stage.to) & (tr["transitioned_at"] > since) \
                & (tr["transitioned_at"] <= self.now)
            if entry.stage.from_:
                ok &= tr["from_stage"].isin(entry.stage.from_)
            hit = tr[ok].groupby("customer_id")["transitioned_at"].max()
            hit = hit[hit.index.isin(self.cust.index)]
            still = self.cust.loc[hit.index, "stage"] == entry.stage.to  # not moved on since
            hit = hit[still.to_numpy(bool)]
            return pd.DataFrame({"customer_id": hit.index.to_numpy(), "trigger_at": hit.to_numpy()})
        if entry.event is not None:
            ev = self.snap.events
            ok = (ev["event_type"] == entry.event.type) & (ev["occurred_at"] > since) \
                & (ev["occurred_at"] <= self.now)
            hit = ev[ok].groupby("customer_id")["occurred_at"].max()
            hit = hit[hit.index.isin(self.cust.index)]
            return pd.DataFrame({"customer_id": hit.index.to_numpy(), "trigger_at": hit.to_numpy()})
        assert j.segment is not None  # the entry is a stage, an event or a segment
        ids = self.cust.index[j.segment.mask(self.cust).to_numpy(bool)]
        return pd.DataFrame({"customer_id": ids.to_numpy(),
                             "trigger_at": np.full(len(ids), self.now.to_datetime64())})

    def _tier_triggers(self, to: str | None, from_: list[str] | None,
                       since: pd.Timestamp) -> pd.DataFrame:
        """Like a stage trigger, over loyalty tier transitions (still in the tier now);
        ``from: none`` matches a customer's first tier."""
        tr = self.snap.tier_transitions
        ok = (tr["transitioned_at"] > since) & (tr["transitioned_at"] <= self.now)
        if to is not None:
            ok &= tr["to_tier"] == to
        if from_:
            ok &= tr["from_tier"].isin(from_) | (tr["from_tier"].isna() & ("none" in from_))
        hit = tr[ok].groupby("customer_id")["transitioned_at"].max()
        hit = hit[hit.index.isin(self.cust.index)]
        if "tier" in self.cust:
            now_tier = self.cust.loc[hit.index, "tier"]
            still = now_tier == to if to is not None else now_tier.notna()
            hit = hit[still.to_numpy(bool)]
        return pd.DataFrame({"customer_id": hit.index.to_numpy(), "trigger_at": hit.to_numpy()})

    def enter(self) -> None:
        new_frames: list[dict[str, np.ndarray]] = []
        next_id = -1
        # the enrollments do not change until the end: one factorisation, not a comparison of
        # every journey name per journey
        code, which = self._journey_codes()
        for name in sorted(self.running):
            j = self.latest[name]
            cand = self._triggers(j)
            if j.audience is not None and len(cand):
                rows = self.cust.loc[cand["customer_id"].to_numpy()]
                cand = cand[j.audience.mask(rows).to_numpy(bool)]
            if cand.empty:
                continue
            mine = np.flatnonzero(code == which.get(name, -2))
            prev = pd.DataFrame({c: self.e[c][mine] for c in (
                "status", "entry_seq", "trigger_at", "unmatched_at", "exited_at", "entered_at")},
                index=self.e["customer_id"][mine])
            last = prev.reindex(cand["customer_id"].to_numpy())
            last.index = cand.index
            first_time = last["status"].isna()
            policy = j.spec.entry.reentry
            again = last["status"].isin(DONE)
            fresh_trigger = cand["trigger_at"] > last["trigger_at"].fillna(pd.Timestamp.min)
            if policy.policy == "once":
                again &= False
            elif policy.policy == "rematch":
                if j.spec.entry.segment is not None:
                    again &= last["unmatched_at"].notna()
                else:
                    again &= fresh_trigger
                if policy.min_gap is not None:
                    again &= (self.now - last["exited_at"]) >= policy.min_gap
            else:
                again &= (self.now - last["entered_at"]) >= policy.every
                if j.spec.entry.segment is None:
                    again &= fresh_trigger
            ok = (first_time | again).to_numpy(bool)
            cand, last = cand[ok], last[ok]
            if cand.empty:
                continue
            ids = cand["customer_id"].to_numpy()
            control = (
                hashing.uniform(ids, j.spec.holdout.salt or j.name) < j.spec.holdout.percent / 100
            )
            control |= hashing.uniform(ids, self.policy.global_control_salt) \
                < self.policy.global_control_percent / 100
            n = len(cand)
            now = np.full(n, self.now64)
            nat = np.full(n, np.datetime64("NaT", "ns"))
            nothing = np.full(n, None, dtype=object)
            new_frames.append({
                "id": np.arange(next_id, next_id - n, -1, dtype=np.int64),
                "journey": np.full(n, name, dtype=object),
                "journey_version": np.full(n, j.version, dtype=np.int64),
                "customer_id": ids.astype(np.int64),
                "entry_seq": last["entry_seq"].fillna(0).astype("int64").to_numpy() + 1,
                "status": np.full(n, ACTIVE, dtype=object), "is_control": control,
                "variant": nothing, "current_step": np.full(n, j.first_step, dtype=object),
                "step_due_at": now, "entered_at": now, "exited_at": nat, "exit_reason": nothing,
                "converted_at": nat, "goal": nothing,
                "trigger_at": cand["trigger_at"].to_numpy("datetime64[ns]"),
                "unmatched_at": nat, "is_new": np.ones(n, dtype=bool),
                "changed": np.ones(n, dtype=bool)})
            next_id -= n
        if new_frames:
            for c, old in self.e.items():
                parts = [f.get(c, np.full(len(f["id"]), None, dtype=object)) for f in new_frames]
                self.e[c] = np.concatenate([old, *parts])
            # the entrants' codes follow from their journey: no new factorisation of them all
            codes = dict(which)
            added = [np.full(len(f["id"]), codes.setdefault(str(f["journey"][0]), len(codes)),
                             dtype=code.dtype) for f in new_frames]
            self._codes = (np.concatenate([code, *added]), codes)

    # --- 3. steps ---------------------------------------------------------------------------

    def advance(self) -> None:
        e = self.e
        code, which = self._journey_codes()
        running = np.isin(code, [which[n] for n in self.running if n in which])
        due = self._active() & running & (e["step_due_at"] <= self.now64)
        todo = pd.Index(np.flatnonzero(due))
        limit = max((len(j.spec.steps) for j in self.by_key.values()), default=0) + 2
        for _ in range(limit):
            if not len(todo):
                break
            todo = self._round(todo)

    def _round(self, todo: pd.Index) -> pd.Index:
        e = self.e
        keep: list[pd.Index] = []
        sends: list[tuple[CompiledJourney, SendStep, pd.Index]] = []
        pos = np.asarray(todo, dtype=np.intp)
        for (name, version, step_id), at in _groups(e["journey"][pos], e["journey_version"][pos],
                                                    e["current_step"][pos]):
            idx = todo[at]
            j = self.by_key.get((name, version))
            if j is None:
                continue
            if step_id == END:
                self._end(idx, "completed", "completed")
                continue
            step = j.steps_by_id[step_id]
            nxt = j.successor[step_id]
            if isinstance(step, WaitStep):
                due = self._wait_until(step, idx)
                self._set(idx, current_step=step.goto or nxt, step_due_at=due)
                keep.append(idx[(due <= self.now).to_numpy()])
            elif isinstance(step, BranchStep):
                rows = self._rows(idx, self._fields(j))
                target = pd.Series(step.else_ or nxt, index=idx, dtype=object)
                open_ = pd.Series(True, index=idx)
                for cond, goto in j.cases[step_id]:
                    hit = open_ & cond.mask(rows)
                    target[hit] = goto
                    open_ &= ~hit
                self._set(idx, current_step=target)
                keep.append(idx)
            elif isinstance(step, SplitStep):
                ids = e["customer_id"][np.asarray(idx, dtype=np.intp)]
                choice = hashing.pick(ids, f"{name}/{step_id}", [v.weight for v in step.split])
                self._set(idx, current_step=pd.Series([v.goto for v in step.split], dtype=object)
                          .to_numpy()[choice],
                          variant=pd.Series([v.variant for v in step.split], dtype=object)
                          .to_numpy()[choice])
                keep.append(idx)
            elif isinstance(step, ExitStep):
                self._end(idx, "completed", step.exit.reason)
            else:
                sends.append((j, step, idx))
        if sends:
            keep.append(self._send(sends))
        return keep[0].append(keep[1:]) if keep else pd.Index([])

    def _wait_until(self, step: WaitStep, idx: pd.Index) -> pd.Series:
        spec = step.spec
        t = self._col("step_due_at", idx)
        if spec.duration is not None:
            t = t + spec.duration
        if spec.until is not None:
            days = [WEEKDAYS.index(d) for d in spec.weekdays] if spec.weekdays else None
            t = clock.next_local_time(t, self._rows(idx, ["tz"])["tz"], spec.until, days)
        return t

    def _send(self, sends: list[tuple[CompiledJourney, SendStep, pd.Index]]) -> pd.Index:
        e = self.e
        parts = []
        for j, step, idx in sends:
            pos = np.asarray(idx, dtype=np.intp)
            tags = sorted(set(j.spec.tags) | set(step.send.tags))
            coupon = step.send.coupon.model_dump(exclude_none=True) if step.send.coupon else None
            parts.append(pd.DataFrame({
                "row": idx, "enrollment_id": e["id"][pos],
                "customer_id": e["customer_id"][pos], "journey": j.name,
                "journey_version": j.version, "step_id": step.id, "channel": step.send.channel,
                "template": step.send.template, "coupon": [coupon] * len(idx),
                "tags": [tags] * len(idx), "is_control": e["is_control"][pos].astype(bool),
                "next": step.goto or j.successor[step.id]}))
        msgs = pd.concat(parts, ignore_index=True)
        decided = self.contact.apply(msgs)
        msgs = msgs.join(decided)
        msgs["idempotency_key"] = message_keys(msgs)
        self.messages.append(msgs)
        end = msgs["end_enrollment"].to_numpy(bool)
        for reason, part in msgs[end].groupby("reason"):
            self._end(pd.Index(part["row"]), "exited", str(reason))
        go = msgs[~end]
        sent = go["status"] != "skipped"
        gi = pd.Index(go["row"])
        cursor = e["step_due_at"][np.asarray(gi, dtype=np.intp)]
        cursor = np.where(sent.to_numpy(), go["send_after"].to_numpy(), cursor)
        # a deferred send moves the rest of the journey to its time; skipped ones go on now
        cursor = np.maximum(cursor, self.now64)
        self._set(gi, current_step=go["next"].to_numpy(), step_due_at=cursor)
        return gi[cursor <= self.now64]

    # --- 5. re-entry memory -----------------------------------------------------------------

    def unmatched(self) -> None:
        for name in self.running:
            j = self.latest[name]
            if j.spec.entry.reentry.policy != "rematch" or j.spec.entry.event is not None:
                continue
            code, which = self._journey_codes()
            done = (code == which.get(name, -2)) & np.isnat(self.e["unmatched_at"])
            idx = pd.Index(np.flatnonzero(done))
            if not len(idx):
                continue
            rows = self._rows(idx, self._fields(j) | {"tier", "stage"})
            if j.segment is not None:
                matching = j.segment.mask(rows).to_numpy(bool)
            elif j.spec.entry.tier is not None:
                to = j.spec.entry.tier.to
                matching = (rows["tier"] == to if to else rows["tier"].notna()).to_numpy(bool)
            else:
                assert j.spec.entry.stage is not None  # the trigger is a segment or a stage
                matching = (rows["stage"] == j.spec.entry.stage.to).to_numpy(bool)
            self._set(idx[~matching], unmatched_at=self.now)

    # --- result -----------------------------------------------------------------------------

    def result(self) -> Plan:
        changed = self.e["changed"]
        e = pd.DataFrame({c: self.e[c][changed] for c in [*self.columns, "is_new"]})
        if self.messages:
            m = pd.concat(self.messages, ignore_index=True)[MESSAGE_COLUMNS]
        else:
            m = pd.DataFrame({c: pd.Series(dtype=object) for c in MESSAGE_COLUMNS})
        entered = e.loc[e["is_new"], ["journey", "customer_id", "is_control"]]
        return Plan(self.now, e.reset_index(drop=True), m, entered.reset_index(drop=True))


def prepare_customers(customers: pd.DataFrame, now: pd.Timestamp, default_tz: str) -> pd.DataFrame:
    """Add what the engine derives: ``tz`` (valid IANA zone), ``days_in_stage``, and
    suppression flags (False when absent). A caller that already holds ``tz`` (a replay,
    whose customers' zones never change, cleans them once) keeps it."""
    # Copy-on-write (pandas 3): the columns added below never reach the caller's frame, so a
    # shallow copy is enough (a deep one copied every customer's every field per evaluation).
    df = customers.copy(deep=False)
    df["customer_id"] = df.index
    if "tz" not in df:
        df["tz"] = clock.frame_zones(df, default_tz)
    if "stage_since" in df:
        df["days_in_stage"] = (now - _ts(df["stage_since"])).dt.total_seconds() / 86400
    for ch in ("email", "sms"):
        if f"suppressed_{ch}" not in df:
            df[f"suppressed_{ch}"] = False
    return df


def add_engagement(customers: pd.DataFrame, events: pd.DataFrame, now: pd.Timestamp) -> None:
    """``days_since_opened`` / ``days_since_clicked``: from the latest such event up to now."""
    for kind in ENGAGEMENT_EVENTS:
        ev = events[(events["event_type"] == kind) & (events["occurred_at"] <= now)]
        last = ev.groupby("customer_id")["occurred_at"].max()
        customers[f"days_since_{kind}"] = (
            (now - customers.index.map(last).astype("datetime64[ns]")).total_seconds() / 86400
            if len(last) else float("nan"))


def plan(journeys: Sequence[CompiledJourney], snapshot: Snapshot, now: pd.Timestamp | str,
         policy: ProjectPolicy | None = None, default_tz: str = "UTC") -> Plan:
    """Decide everything one evaluation at ``now`` would do (pure: writes nothing).

    ``journeys`` holds the current definition of each journey (the highest version wins) and
    any older versions that enrollments still follow.
    """
    now = pd.Timestamp(now)
    now = (now.tz_convert("UTC").tz_localize(None) if now.tzinfo else now).as_unit("ns")
    customers = prepare_customers(snapshot.customers, now, default_tz)
    add_engagement(customers, snapshot.events, now)
    snapshot = replace(snapshot, customers=customers)
    run = _Run(journeys, snapshot, now, policy or ProjectPolicy())
    run.versions()
    run.goals()
    run.advance()  # first those already in, so anyone who finishes now may re-enter below
    run.enter()
    run.advance()
    run.unmatched()
    return run.result()
