"""The contact policy: control group, consent, frequency caps and quiet hours, vectorised.

Every planned message gets a status and a reason code:

- ``skipped``: ``control_group``, ``no_consent``, ``no_consent_topic``, ``no_address``,
  ``suppressed``, ``quiet_hours``, ``frequency_cap:<cap>``, ``unschedulable``
- ``deferred``: moved to the next allowed time by ``quiet_hours`` or ``frequency_cap:<cap>``
- ``pending``: due now.

A blocked message's journey decides whether it is deferred, skipped (the journey goes on) or
ends the enrollment (``end_enrollment``). Caps count every message of the customer that is
planned or sent (the ledger) across journeys: a new message at time s is allowed when fewer than
``max`` matching messages lie in (s - window, s + window), which keeps every sliding window at or
under the cap even with messages deferred into the future. Messages of one customer in one batch
go in priority order, each seeing the ones before it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from clm_core.journeys import clock
from clm_core.journeys.model import Cap, QuietHours

MAX_ROUNDS = 8  # cap and quiet-hour shifts only move forward; this bounds pathological rules


@dataclass(frozen=True)
class JourneyRules:
    """What one journey's messages are subject to."""

    caps: tuple[Cap, ...]
    quiet: QuietHours
    consent: str  # skip | end
    quiet_hours: str  # defer | skip | end
    frequency: str  # defer | skip | end
    priority: int = 0


def _tag_hits(tags: pd.Series, tag: str) -> pd.Series:
    exploded = tags.explode()
    return (exploded == tag).groupby(level=0).any().reindex(tags.index, fill_value=False)


class ContactPolicy:
    """Applies the rules to batches of messages, remembering what it accepted (the ledger)."""

    def __init__(self, rules: Mapping[str, JourneyRules], customers: pd.DataFrame,
                 ledger: pd.DataFrame, now: pd.Timestamp,
                 withdrawn_topics: pd.DataFrame | None = None):
        self.rules = rules
        self.customers = customers
        self.now = now
        # (customer_id, channel, topic) withdrawn: a message tagged with the topic is skipped
        # here as dispatch would skip it, so it is planned as what it is (no_consent_topic)
        # instead of waiting in the outbox, counting against caps and being skipped later.
        w = withdrawn_topics
        self.withdrawn: frozenset[tuple[int, str, str]] = frozenset() if w is None or w.empty \
            else frozenset(zip(w["customer_id"].astype(int), w["channel"], w["topic"]))
        caps: dict[str, Cap] = {}
        for r in rules.values():
            for c in r.caps:
                caps.setdefault(c.key, c)
        self.caps = caps
        # The ledger as arrays: customer, time and, per cap, whether the message counts for it.
        # A row without a time never lies in a window, so it is left out.
        timed = ledger["at"].notna().to_numpy(bool)
        self._led_c = ledger["customer_id"].to_numpy()[timed]
        self._led_at = ledger["at"].to_numpy("datetime64[ns]")[timed]
        self._led_m = {key: self._matches(cap, ledger["channel"], ledger["tags"]).to_numpy(bool)
                       [timed] for key, cap in caps.items()}
        self._added_c: list[np.ndarray] = [self._led_c]
        self._added_at: list[np.ndarray] = [self._led_at]
        self._added_m: dict[str, list[np.ndarray]] = {k: [v] for k, v in self._led_m.items()}

    @staticmethod
    def _matches(cap: Cap, channel: pd.Series, tags: pd.Series) -> pd.Series:
        hit = (
            pd.Series(True, index=channel.index) if cap.channel is None else channel == cap.channel
        )
        if cap.tag is not None and len(tags):
            hit &= _tag_hits(tags, cap.tag)
        elif cap.tag is not None:
            hit &= False
        return hit

    def apply(self, msgs: pd.DataFrame) -> pd.DataFrame:
        """``msgs`` has customer_id, journey, channel, tags, is_control. Returns status, reason,
        send_after, end_enrollment aligned with it; accepted messages join the ledger."""
        n = len(msgs)
        d = _Decision(n, self.now)
        if n:
            self._decide(msgs, d)
        return pd.DataFrame({"status": d.status, "reason": pd.Series(d.reason, dtype=object,
                                                                       index=msgs.index),
                             "send_after": d.send_after, "end_enrollment": d.end},
                            index=msgs.index)

    def _decide(self, msgs: pd.DataFrame, d: _Decision) -> None:
        """The checks on numpy arrays, by position: pandas' per-call overhead on small batches
        was most of planning's time."""
        cust = self.customers.reindex(msgs["customer_id"].to_numpy())
        jcode, jnames = pd.factorize(msgs["journey"].to_numpy(object))
        rules = [self.rules.get(str(j)) for j in jnames]

        def per_msg(value: Callable[[JourneyRules], object]) -> np.ndarray:
            """A rule's property, for every message (None where the journey has no rules)."""
            return np.array([value(r) if r is not None else None for r in rules],
                            dtype=object)[jcode]

        consent_end = per_msg(lambda r: r.consent) == "end"
        d.block(msgs["is_control"].to_numpy(bool), "control_group", np.zeros(len(msgs), bool))
        channel = msgs["channel"].to_numpy(object)
        for ch, addr in (("email", "email"), ("sms", "phone")):
            on = (channel == ch) & d.pending
            d.block(on & ~cust[f"consent_{ch}"].fillna(False).astype(bool).to_numpy(),
                    "no_consent", consent_end)
            d.block(on & cust[addr].isna().to_numpy(), "no_address", consent_end)
            d.block(on & cust[f"suppressed_{ch}"].fillna(False).astype(bool).to_numpy(),
                    "suppressed", consent_end)
        if self.withdrawn:
            d.block(self._topic_withdrawn(msgs).to_numpy(bool), "no_consent_topic", consent_end)
        live = np.flatnonzero(d.pending)
        if not len(live):
            return
        # one message per customer per pass, highest priority first (customer, -priority,
        # journey, step; ties keep their order)
        cid = msgs["customer_id"].to_numpy()
        prio = per_msg(lambda r: r.priority)
        step = (msgs["step_id"].to_numpy(object) if "step_id" in msgs
                else np.full(len(msgs), "", dtype=object))
        journey = np.asarray(jnames, dtype=object)[jcode]
        keys = [pd.factorize(v[live], sort=True)[0] for v in (step, journey)]
        order = live[np.lexsort((*keys, -prio[live].astype(np.int64), cid[live]))]
        c_sorted = cid[order]
        first = np.r_[True, c_sorted[1:] != c_sorted[:-1]]
        starts = np.flatnonzero(first)
        rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
        live_s = msgs.iloc[live]
        membership = {}
        for key, cap in self.caps.items():
            has = np.array([r is not None and key in {c.key for c in r.caps} for r in rules],
                           dtype=bool)
            m = np.zeros(len(msgs), dtype=bool)
            m[live] = self._matches(cap, live_s["channel"], live_s["tags"]).to_numpy(bool) \
                & has[jcode[live]]
            membership[key] = m
        act = _Actions(per_msg(lambda r: r.frequency), per_msg(lambda r: r.quiet_hours))
        tz = cust["tz"].to_numpy(object)
        for r in range(int(rank.max()) + 1):
            rows = order[rank == r]
            self._schedule(rows, cid, jcode, rules, tz, act, membership, d)

    def _topic_withdrawn(self, msgs: pd.DataFrame) -> pd.Series:
        """Messages with a tag their customer withdrew from on the message's channel."""
        tags = msgs["tags"].explode().dropna()
        if tags.empty:
            return pd.Series(False, index=msgs.index)
        keys = zip(msgs.loc[tags.index, "customer_id"].astype(int), msgs.loc[tags.index, "channel"],
                   tags)
        hit = pd.Series([k in self.withdrawn for k in keys], index=tags.index)
        return hit.groupby(level=0).any().reindex(msgs.index, fill_value=False)

    def _ledger(self, customers: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """The ledger rows of these customers (customer, at, matches per cap)."""
        if len(self._added_c) > 1:
            self._led_c = np.concatenate(self._added_c)
            self._led_at = np.concatenate(self._added_at)
            self._led_m = {k: np.concatenate(v) for k, v in self._added_m.items()}
            self._added_c, self._added_at = [self._led_c], [self._led_at]
            self._added_m = {k: [v] for k, v in self._led_m.items()}
        mine = np.isin(self._led_c, customers)
        return (self._led_c[mine], self._led_at[mine],
                {k: v[mine] for k, v in self._led_m.items()})

    def _schedule(self, rows: np.ndarray, cid: np.ndarray, jcode: np.ndarray,
                  rules: list[JourneyRules | None], tz_all: np.ndarray, act: _Actions,
                  membership: Mapping[str, np.ndarray], d: _Decision) -> None:
        """At most one message per customer (``rows``, positions in the batch): find each
        one's allowed time, then record it."""
        k = len(rows)
        now = self.now.to_datetime64()
        c = cid[rows]
        s = np.full(k, now).astype("datetime64[ns]")
        final = np.zeros(k, dtype=bool)
        reason = np.full(k, None, dtype=object)
        jc = jcode[rows]
        tz = tz_all[rows]
        freq, quiet = act.frequency[rows], act.quiet[rows]
        mem = {key: m[rows] for key, m in membership.items()}
        # Only these customers' ledger rows can block them: filter once, not per cap and round.
        led_c, led_at, led_m = self._ledger(c)
        moved = np.zeros(k, dtype=bool)

        def finish(at: np.ndarray, why: str, action: np.ndarray) -> None:
            if not len(at):
                return
            final[at] = True
            d.skip(rows[at], why, action[at] == "end")

        for _ in range(MAX_ROUNDS):
            moved = np.zeros(k, dtype=bool)
            for key, cap in self.caps.items():
                sel = np.flatnonzero(mem[key] & ~final)
                if not len(sel):
                    continue
                window = pd.Timedelta(cap.window).to_timedelta64().astype("timedelta64[ns]")
                lc, la = led_c[led_m[key]], led_at[led_m[key]]
                by = np.argsort(lc, kind="stable")
                lc, la = lc[by], la[by]
                lo = np.searchsorted(lc, c[sel], "left")
                cnt = np.searchsorted(lc, c[sel], "right") - lo
                total = int(cnt.sum())
                if not total:
                    continue
                pair = np.repeat(np.arange(len(sel)), cnt)
                pos = np.repeat(lo - (np.cumsum(cnt) - cnt), cnt) + np.arange(total)
                at = la[pos]
                near = np.abs(at - s[sel][pair]) < window
                counts = np.bincount(pair[near], minlength=len(sel))
                blocked = counts >= cap.max
                if not blocked.any():
                    continue
                latest = np.full(len(sel), np.iinfo(np.int64).min, dtype=np.int64)
                np.maximum.at(latest, pair[near], at[near].view(np.int64))
                latest_b = latest[blocked].view("datetime64[ns]") + window
                b = sel[blocked]
                defer = freq[b] == "defer"
                finish(b[~defer], f"frequency_cap:{key}", freq)
                go = b[defer]
                s[go] = np.maximum(s[go], latest_b[defer])
                reason[go] = f"frequency_cap:{key}"
                moved[go] = True
            open_ = ~final
            for code in pd.unique(jc[open_]):
                window_q = rules[code].quiet  # type: ignore[union-attr]
                if not window_q.enabled:
                    continue
                grp = np.flatnonzero(open_ & (jc == code))
                inside = clock.in_window(pd.Series(s[grp]), pd.Series(tz[grp], dtype=object),
                                         window_q.start, window_q.end).to_numpy(bool)
                hit = grp[inside]
                if not len(hit):
                    continue
                defer = quiet[hit] == "defer"
                finish(hit[~defer], "quiet_hours", quiet)
                go = hit[defer]
                if len(go):
                    s[go] = clock.after_window(pd.Series(s[go]), pd.Series(tz[go], dtype=object),
                                               window_q.start, window_q.end).to_numpy(
                                                   "datetime64[ns]")
                    reason[go] = "quiet_hours"
                    moved[go] = True
            if not moved.any():
                break
        else:
            finish(np.flatnonzero(moved), "unschedulable", np.full(k, "skip", dtype=object))
        ok = ~final
        d.send_after[rows[ok]] = s[ok]
        deferred = ok & (s > now)
        d.status[rows[deferred]] = "deferred"
        d.reason[rows[deferred]] = reason[deferred]
        self._added_c.append(c[ok])
        self._added_at.append(s[ok])
        for key in self.caps:
            self._added_m[key].append(mem[key][ok])


@dataclass
class _Actions:
    """Per message of a batch: its journey's frequency and quiet_hours actions."""

    frequency: np.ndarray
    quiet: np.ndarray


class _Decision:
    """What ``apply`` returns, as arrays by position while it is being decided."""

    def __init__(self, n: int, now: pd.Timestamp):
        self.status = np.full(n, "pending", dtype=object)
        self.reason = np.full(n, None, dtype=object)
        self.send_after = np.full(n, now.to_datetime64()).astype("datetime64[ns]")
        self.end = np.zeros(n, dtype=bool)
        self.pending = np.ones(n, dtype=bool)

    def block(self, mask: np.ndarray, reason: str, end: np.ndarray) -> None:
        """Skip the pending messages of ``mask``; ``end`` says which end their enrollment."""
        mask = mask & self.pending
        if mask.any():
            self.skip(np.flatnonzero(mask), reason, end[mask])

    def skip(self, at: np.ndarray, reason: str, end: np.ndarray) -> None:
        self.status[at] = "skipped"
        self.reason[at] = reason
        self.end[at] = end
        self.pending[at] = False


def rules_for(
    journeys: Sequence, project_caps: Sequence[Cap], project_quiet: QuietHours
) -> dict[str, JourneyRules]:
    """Each journey's effective rules: the project's caps plus its own, its quiet hours."""
    out = {}
    for j in journeys:
        cp = j.spec.contact_policy
        out[j.name] = JourneyRules(caps=tuple(project_caps) + tuple(cp.caps),
                                   quiet=cp.quiet_hours_window or project_quiet,
                                   consent=cp.consent, quiet_hours=cp.quiet_hours,
                                   frequency=cp.frequency, priority=j.spec.priority)
    return out
