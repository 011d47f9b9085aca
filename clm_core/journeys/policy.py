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

from collections.abc import Mapping, Sequence
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
        led = ledger[["customer_id", "channel", "at"]].copy()
        for key, cap in caps.items():
            led[key] = self._matches(cap, ledger["channel"], ledger["tags"])
        self.ledger = led.reset_index(drop=True)

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
        out = pd.DataFrame(
            {
                "status": np.full(n, "pending", dtype=object),
                "reason": np.full(n, None, dtype=object),
                "send_after": np.full(n, self.now.to_datetime64()).astype("datetime64[ns]"),
                "end_enrollment": np.zeros(n, dtype=bool),
            },
            index=msgs.index,
        )
        if not n:
            return out
        cust = self.customers.reindex(msgs["customer_id"].to_numpy())
        cust.index = msgs.index
        action = msgs["journey"].map({j: r.consent for j, r in self.rules.items()})
        self._block(
            out,
            msgs["is_control"].to_numpy(bool),
            "control_group",
            pd.Series("skip", index=msgs.index),
        )
        for ch, addr in (("email", "email"), ("sms", "phone")):
            on = (msgs["channel"] == ch) & (out["status"] == "pending")
            self._block(
                out, on & ~cust[f"consent_{ch}"].fillna(False).astype(bool), "no_consent", action
            )
            self._block(
                out, on & (out["status"] == "pending") & cust[addr].isna(), "no_address", action
            )
            self._block(out, on & (out["status"] == "pending")
                        & cust[f"suppressed_{ch}"].fillna(False).astype(bool), "suppressed", action)
        if self.withdrawn:
            self._block(out, self._topic_withdrawn(msgs), "no_consent_topic", action)
        live = msgs[out["status"] == "pending"]
        if live.empty:
            return out
        # one message per customer per pass, highest priority first
        prio = live["journey"].map({j: r.priority for j, r in self.rules.items()})
        order = pd.DataFrame({"c": live["customer_id"], "p": -prio, "j": live["journey"],
                              "s": live.get("step_id", "")}).sort_values(["c", "p", "j", "s"])
        rank = order.groupby("c", sort=False).cumcount()
        membership = {key: self._matches(cap, live["channel"], live["tags"])
                      & live["journey"].isin([j for j, r in self.rules.items()
                                              if key in {c.key for c in r.caps}])
                      for key, cap in self.caps.items()}
        for r in range(int(rank.max()) + 1):
            idx = rank.index[rank.to_numpy() == r]
            self._schedule(
                live.loc[idx], cust.loc[idx], {k: m.loc[idx] for k, m in membership.items()}, out
            )
        return out

    def _topic_withdrawn(self, msgs: pd.DataFrame) -> pd.Series:
        """Messages with a tag their customer withdrew from on the message's channel."""
        tags = msgs["tags"].explode().dropna()
        if tags.empty:
            return pd.Series(False, index=msgs.index)
        keys = zip(msgs.loc[tags.index, "customer_id"].astype(int), msgs.loc[tags.index, "channel"],
                   tags)
        hit = pd.Series([k in self.withdrawn for k in keys], index=tags.index)
        return hit.groupby(level=0).any().reindex(msgs.index, fill_value=False)

    def _block(self, out: pd.DataFrame, mask: np.ndarray | pd.Series, reason: str,
               action: pd.Series) -> None:
        mask = np.asarray(mask, dtype=bool) & (out["status"].to_numpy() == "pending")
        if not mask.any():
            return
        out.loc[mask, "status"] = "skipped"
        out.loc[mask, "reason"] = reason
        out.loc[mask, "end_enrollment"] = (action[mask] == "end").to_numpy()

    def _schedule(self, msgs: pd.DataFrame, cust: pd.DataFrame,
                  membership: Mapping[str, pd.Series], out: pd.DataFrame) -> None:
        """At most one message per customer: find each one's allowed time, then record it."""
        s = pd.Series(self.now, index=msgs.index).astype("datetime64[ns]")
        final = pd.Series(False, index=msgs.index)
        reason = pd.Series(None, index=msgs.index, dtype=object)
        tz = cust["tz"]
        freq = msgs["journey"].map({j: r.frequency for j, r in self.rules.items()})
        quiet_act = msgs["journey"].map({j: r.quiet_hours for j, r in self.rules.items()})
        # Only these customers' ledger rows can block them: filter once, not per cap and round.
        mine = self.ledger[self.ledger["customer_id"].isin(msgs["customer_id"].to_numpy())]
        for _ in range(MAX_ROUNDS):
            moved = pd.Series(False, index=msgs.index)
            for key, cap in self.caps.items():
                m = membership[key] & ~final
                if not m.any():
                    continue
                led = mine.loc[mine[key], ["customer_id", "at"]]
                here = pd.DataFrame({"customer_id": msgs.loc[m, "customer_id"], "s": s[m]})
                here["row"] = here.index
                near = here.merge(led, on="customer_id")
                near = near[(near["at"] - near["s"]).abs() < cap.window]
                counts = near.groupby("row").size()
                blocked = counts.index[counts.to_numpy() >= cap.max]
                if not len(blocked):
                    continue
                latest = near[near["row"].isin(blocked)].groupby("row")["at"].max() + cap.window
                act = freq[blocked]
                stop = blocked[(act != "defer").to_numpy()]
                self._finish(out, final, stop, f"frequency_cap:{key}", freq)
                go = blocked[(act == "defer").to_numpy()]
                s[go] = np.maximum(s[go].to_numpy(), latest[go].to_numpy())
                reason[go] = f"frequency_cap:{key}"
                moved[go] = True
            open_ = msgs.loc[~final, "journey"]
            for journey, rows in open_.groupby(open_, sort=False).groups.items():
                window = self.rules[str(journey)].quiet
                if not window.enabled:
                    continue
                inside = clock.in_window(s[rows], tz[rows], window.start, window.end)
                hit = inside.index[inside.to_numpy()]
                if not len(hit):
                    continue
                stop = hit[(quiet_act[hit] != "defer").to_numpy()]
                self._finish(out, final, stop, "quiet_hours", quiet_act)
                go = hit[(quiet_act[hit] == "defer").to_numpy()]
                if len(go):
                    s[go] = clock.after_window(s[go], tz[go], window.start, window.end)
                    reason[go] = "quiet_hours"
                    moved[go] = True
            if not moved.any():
                break
        else:
            self._finish(out, final, moved.index[moved.to_numpy()], "unschedulable",
                         pd.Series("skip", index=msgs.index))
        ok = ~final
        out.loc[ok[ok].index, "send_after"] = s[ok].to_numpy()
        deferred = ok & (s > self.now)
        out.loc[deferred[deferred].index, "status"] = "deferred"
        out.loc[deferred[deferred].index, "reason"] = reason[deferred].to_numpy()
        add = pd.DataFrame({"customer_id": msgs.loc[ok, "customer_id"].to_numpy(),
                            "channel": msgs.loc[ok, "channel"].to_numpy(),
                            "at": s[ok].to_numpy()})
        for key in self.caps:
            add[key] = membership[key][ok].to_numpy()
        self.ledger = pd.concat([self.ledger, add], ignore_index=True)

    @staticmethod
    def _finish(out: pd.DataFrame, final: pd.Series, rows: pd.Index, reason: str,
                action: pd.Series) -> None:
        if not len(rows):
            return
        final[rows] = True
        out.loc[rows, "status"] = "skipped"
        out.loc[rows, "reason"] = reason
        out.loc[rows, "end_enrollment"] = (action[rows] == "end").to_numpy()


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
