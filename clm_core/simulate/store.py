"""A simulated store: customers who buy day by day and respond to messages with planted effects,
run through the real lifecycle step; the truth kept apart.

The loop, for each simulated day ``d`` (``now_d`` is that day's run time, 10:00 in the store's
time zone; ``as_of_d`` the day before, as the daily schedule runs):

1. on a step day (every ``every_days``), ``step(as_of_d, now_d)`` runs the lifecycle: scoring,
   journeys, dispatch to the providers (the caller decides how: the Prefect flow, or the same
   functions in process);
2. ``observe``: the messages the step sent (the outbox, status ``sent``) are what customers
   received; a message of a journey or template with an effect starts an exposure of
   ``days`` days; its coupon may be redeemed; an unsubscribe is drawn and, when it happens,
   written through the consent ledger (source ``unsubscribe``, as the unsubscribe link does).
   The control group's skipped messages (reason ``control_group``) are the would-be exposures,
   moved out of the customer's quiet hours as planning moves the treated's (``_hold_back``);
3. the day's purchases, from ``now_d`` to ``now_{d+1}``, in every world
   (``clm_core.simulate.shoppers``), and the actual world's orders (with coupon codes) and
   their order lines written with the bulk writer the importer uses, together with customers
   born that day. The lines come from ``clm_core.recommend.catalog``: each customer has a
   segment with its own product popularity, and an order's main item follows the previous
   order's (complements, repeat consumables), so the store has the product affinities a
   recommender can learn (``clm recommend evaluate`` measures them).

Worlds: world 0 is what happens. For every journey with an effect (its own, or one of its
templates'), one more world flips that journey's exposures: the treated lose the exposures its
messages started, the control gain the would-be ones, every other exposure as it happened.
So for each enrollment both potential outcomes exist (one happened, the other is the flip),
from the same random numbers: this is the truth ``truth_for`` computes per journey, in the
lift report's own estimand (module ``clm_core.simulate.truth``).

The truth (the generating parameters, exposures, coupons, unsubscribes, the other worlds'
purchases) lives in this object and in files written apart (``write_truth``); the store's
tables hold only what a real store would: customers, orders, and what the lifecycle wrote.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from clm_core.consent.ledger import ADDRESS_COLUMN, record_change
from clm_core.db import tables as t
from clm_core.db.bulk import write_frame
from clm_core.ingest.people import numbered
from clm_core.ingest.synthetic import SyntheticParams, contacts, write_store
from clm_core.journeys import clock
from clm_core.journeys.loader import CompiledJourney
from clm_core.journeys.model import ProjectPolicy, SendStep
from clm_core.journeys.policy import rules_for
from clm_core.recommend.catalog import (
    CatalogParams,
    ItemChain,
    draw_segments,
    make_catalog,
    order_items,
)
from clm_core.simclock import simulated_steps
from clm_core.simulate.effects import Effects
from clm_core.simulate.shoppers import DayOrders, Shoppers

PREFIX = "sim"
DEFAULT_START = date(2025, 3, 31)
Step = Callable[[date, datetime], object]


@dataclass(frozen=True)
class SimConfig:
    """What store to simulate. ``start`` is the first as-of day; ``history_days`` of orders
    exist before it; ``days`` are simulated after it, with a lifecycle step every
    ``every_days`` (and one more at the end, so the last day's orders are measured)."""

    customers: int
    days: int
    seed: int = 0
    every_days: int = 1
    history_days: int = 365
    start: date = DEFAULT_START
    hour: int = 10
    timezone: str = "UTC"
    params: SyntheticParams = SyntheticParams()
    catalog: CatalogParams = CatalogParams()


@dataclass
class Exposure:
    """Per exposure (parallel arrays): customer index, effect, journey, first and last+1 day,
    whether it was received (False: a control group's would-be message)."""

    customer: list[int] = field(default_factory=list)
    effect: list[int] = field(default_factory=list)
    journey: list[str] = field(default_factory=list)
    start: list[int] = field(default_factory=list)
    end: list[int] = field(default_factory=list)
    received: list[bool] = field(default_factory=list)
    message_id: list[int] = field(default_factory=list)

    def add(self, **row: object) -> None:
        for k, v in row.items():
            getattr(self, k).append(v)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({k: getattr(self, k) for k in self.__dataclass_fields__})


@dataclass
class Held:
    """A coupon a customer holds: redeemed by a purchase with probability ``redeem`` while
    valid (once)."""

    code: str
    issued: float  # day index (fractional)
    until: float
    redeem: float
    message_id: int
    used_by: str | None = None


def journey_templates(journeys: list[CompiledJourney]) -> dict[str, set[str]]:
    """Journey -> the templates its send steps use."""
    out: dict[str, set[str]] = {}
    for j in journeys:
        out[j.name] = {s.send.template for s in j.spec.steps if isinstance(s, SendStep)}
    return out


class Simulation:
    """One simulated store on ``engine`` (module docstring)."""

    def __init__(self, engine: Engine, config: SimConfig, effects: Effects,
                 journeys: list[CompiledJourney], policy: ProjectPolicy | None = None):
        self.engine, self.config, self.effects = engine, config, effects
        self.templates = journey_templates(journeys)
        policy = policy or ProjectPolicy.model_validate({})
        self.rules = rules_for(journeys, policy.caps, policy.quiet_hours)
        # one flipped world per journey that carries an effect
        self.flips = sorted(j for j, temps in self.templates.items()
                            if any(e.journey == j or e.template in temps for e in effects.items))
        c = config
        self.steps = simulated_steps(c.start, c.days + 1, timedelta(days=1), c.hour, c.timezone)
        self.origin = self.steps[0][1]  # day 0 begins at the first run
        self.rng = np.random.default_rng([c.seed, 0])
        self.coupon_rng = np.random.default_rng([c.seed, 1])
        self.unsub_rng = np.random.default_rng([c.seed, 2])
        self.basket_rng = np.random.default_rng([c.seed, 5])
        # Order lines: streams of their own, so the purchases and effects draw what they did
        # before the store had lines. The segments and catalogue are part of the truth.
        self.catalog = make_catalog(np.random.default_rng([c.seed, 6]), c.catalog)
        self.segments = pd.Series(draw_segments(np.random.default_rng([c.seed, 7]),
                                                c.customers, c.catalog),
                                  index=np.arange(1, c.customers + 1))
        self.item_rng = np.random.default_rng([c.seed, 8])
        self.chain = ItemChain()
        self.shoppers = Shoppers(c.customers, c.params, np.random.default_rng([c.seed, 3]),
                                 c.history_days, c.days)
        self.numbers = np.arange(1, c.customers + 1)
        self.external = numbered(f"{PREFIX}-", self.numbers, 5)
        joined = -c.history_days * np.random.default_rng([c.seed, 4]).random(c.customers)
        signed_up = np.where(self.shoppers.prospect, joined, self.shoppers.birth)
        self.customers = contacts(self.numbers, PREFIX, self.moment(signed_up),
                                  self.shoppers.prospect)
        self.exposures = Exposure()
        self.coupons: dict[int, list[Held]] = {}
        self.unsubscribed: set[tuple[int, str]] = set()
        self.unsubscribes: list[dict[str, object]] = []
        self.orders: list[list[DayOrders]] = [[] for _ in range(1 + len(self.flips))]
        self.order_seq = 0
        self.redemptions: list[dict[str, object]] = []
        self._seen_control = 0
        self._would_be: list[tuple[datetime, int, dict[str, object]]] = []
        self.steps_run = 0

    # --- time -------------------------------------------------------------------------

    def moment(self, day: np.ndarray) -> np.ndarray:
        """Naive UTC datetimes of fractional day indices, in whole seconds. Day ``d`` runs
        from ``now_d`` to ``now_{d+1}`` (a run's time moves with daylight saving); history
        days are 24 hours before the origin."""
        day = np.asarray(day, dtype=float)
        nows = np.array([now for _, now in self.steps], dtype="datetime64[s]")
        whole = np.floor(day).astype(np.int64)
        inside = (whole >= 0) & (whole < len(nows) - 1)
        base = np.where(inside, nows[np.clip(whole, 0, len(nows) - 1)],
                        np.datetime64(self.origin, "s") + whole * np.timedelta64(86400, "s"))
        span = np.where(inside, (nows[np.clip(whole + 1, 0, len(nows) - 1)]
                                 - nows[np.clip(whole, 0, len(nows) - 1)]).astype(np.int64),
                        86400)
        return base + np.floor((day - whole) * span).astype("timedelta64[s]")

    def day_of(self, when: datetime) -> float:
        """The fractional day index of a moment of the simulated period."""
        nows = [now for _, now in self.steps]
        d = max(0, min(len(nows) - 2, int(np.searchsorted(np.array(nows, dtype="datetime64[s]"),
                                                          np.datetime64(when, "s"), "right")) - 1))
        return d + (when - nows[d]).total_seconds() / (nows[d + 1] - nows[d]).total_seconds()

    @property
    def end(self) -> datetime:
        """The measuring moment: the last step's run."""
        return self.steps[-1][1]

    # --- the loop ---------------------------------------------------------------------

    def run(self, step: Step, on_day: Callable[[int, date, datetime], None] | None = None) -> None:
        """History, then every simulated day (module docstring)."""
        self.begin()
        for d, (as_of, now) in enumerate(self.steps):
            if d % self.config.every_days == 0 or d == self.config.days:
                step(as_of, now)
                self.steps_run += 1
                self.observe(d, now)
            if on_day is not None:
                on_day(d, as_of, now)
            if d < self.config.days:
                self.purchases(d)

    def begin(self) -> None:
        """Customers known before the first day and their history, in one transaction."""
        history = [self.shoppers.day(self.rng, d)[0]
                   for d in range(-self.config.history_days, 0)]
        self.shoppers.split(1 + len(self.flips))
        known = self.shoppers.prospect | (self.shoppers.birth < 0)
        self._write(np.flatnonzero(known), history)

    def purchases(self, d: int) -> None:
        """Day ``d``'s purchases in every world; the actual world's written."""
        worlds = self.shoppers.day(self.rng, d, self.multipliers(d))
        for w, orders in enumerate(worlds):
            self.orders[w].append(orders)
        born = np.flatnonzero((self.shoppers.birth >= d) & (self.shoppers.birth < d + 1))
        self._write(born, [worlds[0]])

    def multipliers(self, d: int) -> np.ndarray:
        """Rate multiplier per world and customer on day ``d`` (module docstring: worlds)."""
        n, w = self.config.customers, 1 + len(self.flips)
        mult = np.ones((w, n))
        ex = self.exposures
        if not ex.customer:
            return mult
        start, end = np.array(ex.start), np.array(ex.end)
        active = (start <= d) & (d < end)
        if not active.any():
            return mult
        cust = np.array(ex.customer)[active]
        journey = np.array(ex.journey, dtype=object)[active]
        received = np.array(ex.received)[active]
        factor = 1.0 + np.array([self.effects.items[i].purchase_lift
                                 for i in np.array(ex.effect)[active]])
        np.multiply.at(mult[0], cust[received], factor[received])
        for k, name in enumerate(self.flips, start=1):
            mine = journey == name
            use = np.where(mine, ~received, received)
            np.multiply.at(mult[k], cust[use], factor[use])
        return mult

    def _write(self, born: np.ndarray, days: list[DayOrders]) -> None:
        customers = self.customers.iloc[born]
        cust = np.concatenate([o.customer for o in days]) if days else np.array([], int)
        at = np.concatenate([o.at for o in days]) if days else np.array([])
        value = np.concatenate([o.value for o in days]) if days else np.array([])
        first = np.concatenate([o.first for o in days]) if days else np.array([], bool)
        codes = self._redeem(cust, at, first)
        seq = self.order_seq + np.arange(1, len(cust) + 1)
        self.order_seq += len(cust)
        orders = order_rows(self.external[cust], numbered(f"{PREFIX}-o", seq, 8),
                            self.moment(at), value, codes, self.basket_rng)
        lines = order_items(self.item_rng, pd.DataFrame({
            "order_id": seq, "customer_id": self.numbers[cust], "ordered_at": at}),
            self.segments, self.config.catalog, self.catalog, self.chain) if len(cust) else None
        with self.engine.begin() as conn:
            write_store(conn, customers, orders, PREFIX)
            if lines is not None and len(lines):
                self._write_lines(conn, lines, orders["external_id"])

    @staticmethod
    def _write_lines(conn: sa.Connection, lines: pd.DataFrame, external: pd.Series) -> None:
        """The day's order lines, under the ids its orders were just given."""
        o = t.orders
        ids = pd.read_sql(sa.select(o.c.id, o.c.external_id).where(
            o.c.external_id.between(external.min(), external.max())), conn)
        by_external = pd.Series(ids["id"].to_numpy(), index=ids["external_id"].to_numpy())
        wanted = numbered(f"{PREFIX}-o", lines["order_id"].to_numpy(), 8)
        items = lines.drop(columns=["order_id"])
        items.insert(0, "order_id", by_external.reindex(wanted).to_numpy())
        write_frame(conn, t.order_items, items, bulk=True)

    def _redeem(self, cust: np.ndarray, at: np.ndarray, first: np.ndarray) -> np.ndarray:
        """Coupon code per order: a held, valid coupon is used with its probability."""
        codes = np.full(len(cust), None, dtype=object)
        if not self.coupons:
            return codes
        for i in np.flatnonzero(~first & np.isin(cust, list(self.coupons))):
            for held in self.coupons[int(cust[i])]:
                if held.used_by is None and held.issued < at[i] <= held.until:
                    if self.coupon_rng.random() < held.redeem:
                        held.used_by = codes[i] = held.code
                    break  # the oldest valid coupon is the one offered at checkout
        return codes

    # --- what the step did ------------------------------------------------------------

    def observe(self, d: int, now: datetime) -> None:
        """Receipts since the previous step, would-be receipts of the control, coupons and
        unsubscribes (module docstring)."""
        prev = self.steps[d - 1][1] if d > 0 else datetime.min
        m, e, cp, c = t.messages, t.journey_enrollments, t.coupons, t.customers
        cols = (m.c.id, m.c.channel, m.c.template, m.c.sent_at, m.c.send_after,
                e.c.journey, c.c.external_id, cp.c.code, cp.c.expires_at)
        q = (sa.select(*cols).select_from(
            m.join(e, e.c.id == m.c.enrollment_id).join(c, c.c.id == e.c.customer_id)
            .outerjoin(cp, cp.c.message_id == m.c.id)))
        with self.engine.connect() as conn:
            sent = pd.DataFrame(conn.execute(q.where(m.c.status == "sent", m.c.sent_at > prev,
                                                     m.c.sent_at <= now)).all(),
                                columns=[x.name for x in cols])
            held = pd.DataFrame(conn.execute(q.where(m.c.status == "skipped",
                                                     m.c.reason == "control_group",
                                                     m.c.id > self._seen_control)).all(),
                                columns=[x.name for x in cols])
        if len(held):
            self._seen_control = int(held["id"].max())
        index = pd.Series(np.arange(len(self.external)), index=self.external)
        unsub: list[tuple[int, str, int, datetime]] = []
        for r in sent.itertuples(index=False):
            who = int(index[r.external_id])
            for i in self.effects.for_message(r.journey, r.template):
                eff = self.effects.items[i]
                self.exposures.add(customer=who, effect=i, journey=r.journey, start=d,
                                   end=d + eff.days, received=True, message_id=int(r.id))
                if eff.coupon is not None and r.code:
                    until = (self.day_of(pd.Timestamp(r.expires_at).to_pydatetime())
                             if r.expires_at is not None and not pd.isna(r.expires_at)
                             else d + eff.days)
                    self.coupons.setdefault(who, []).append(Held(
                        str(r.code), self.day_of(now), until, eff.coupon.redeem, int(r.id)))
                if eff.unsubscribe and self.unsub_rng.random() < eff.unsubscribe:
                    unsub.append((who, str(r.channel), int(r.id), now))
        self._hold_back(held, index)
        due = [x for x in self._would_be if x[0] <= now]
        self._would_be = [x for x in self._would_be if x[0] > now]
        for _, effect, row in due:
            self.exposures.add(**row, effect=effect, start=d,
                               end=d + self.effects.items[effect].days)
        self._unsubscribe(unsub)

    def _hold_back(self, held: pd.DataFrame, index: pd.Series) -> None:
        """The control group's would-be receipts: when the treated would have received the
        message. Planning moves a treated message out of the customer's quiet hours (or drops
        it, when the journey says skip or end), and dispatch sends it at the first run at or
        after that time; a control's skipped row keeps the planning time, so the same move is
        applied here, and the exposure waits for that run."""
        rows = [r for r in held.itertuples(index=False)
                if self.effects.for_message(r.journey, r.template)
                and self._reachable(int(index[r.external_id]), str(r.channel))]
        if not rows:
            return
        frame = pd.DataFrame(rows)
        frame["who"] = [int(index[x]) for x in frame["external_id"]]
        tz = clock.clean_zones(self.customers["timezone"].iloc[frame["who"]].reset_index(
            drop=True), self.config.timezone)
        at = pd.to_datetime(frame["send_after"]).astype("datetime64[ns]")
        for journey, part in frame.groupby("journey"):
            rule = self.rules.get(str(journey))
            when = at[part.index]
            if rule is not None and rule.quiet.enabled:
                inside = clock.in_window(when, tz[part.index], rule.quiet.start, rule.quiet.end)
                if rule.quiet_hours != "defer":
                    part, when = part[~inside.to_numpy()], when[~inside]
                else:
                    when = clock.after_window(when, tz[part.index], rule.quiet.start,
                                              rule.quiet.end)
            for r, moment in zip(part.itertuples(index=False), when):
                for i in self.effects.for_message(r.journey, r.template):
                    self._would_be.append((pd.Timestamp(moment).to_pydatetime(), i, {
                        "customer": int(r.who), "journey": r.journey, "received": False,
                        "message_id": int(r.id)}))

    def _reachable(self, who: int, channel: str) -> bool:
        row = self.customers.iloc[who]
        if channel not in ADDRESS_COLUMN or (who, channel) in self.unsubscribed:
            return False
        return bool(row[f"consent_{channel}"]) and bool(row[ADDRESS_COLUMN[channel]])

    def _unsubscribe(self, rows: list[tuple[int, str, int, datetime]]) -> None:
        """Customers who unsubscribe after a message, through the consent ledger (what the
        unsubscribe link's one-click POST writes)."""
        if not rows:
            return
        ids = dict(pd.read_sql(sa.select(t.customers.c.external_id, t.customers.c.id).where(
            t.customers.c.external_id.in_([self.external[w] for w, *_ in rows])),
            self.engine).itertuples(index=False))
        with self.engine.begin() as conn:
            for who, channel, message_id, now in rows:
                if (who, channel) in self.unsubscribed:
                    continue
                self.unsubscribed.add((who, channel))
                at = now + timedelta(hours=1)
                record_change(conn, customer_id=int(ids[self.external[who]]), channel=channel,
                              action="withdrawn", source="unsubscribe", occurred_at=at,
                              evidence_key=f"simulated-unsubscribe:{message_id}",
                              evidence={"simulated": True, "message_id": message_id})
                self.unsubscribes.append({"customer": self.external[who], "channel": channel,
                                          "message_id": message_id, "at": at.isoformat()})


def order_rows(customer: np.ndarray, external_id: np.ndarray, ordered_at: np.ndarray,
               value: np.ndarray, coupon_code: np.ndarray, rng: np.random.Generator
               ) -> pd.DataFrame:
    """The ``orders`` rows of generated purchases (``write_store``'s shape).

    The order lines are generated beside them (``Simulation._write``), from their own random
    stream."""
    return pd.DataFrame({
        "external_id": external_id,
        "customer_external_id": customer,
        "ordered_at": pd.to_datetime(ordered_at),
        "amount": np.round(value, 2),
        "currency": "USD",
        "quantity": 1 + rng.poisson(0.6, len(customer)),
        "status": "completed",
        "coupon_code": coupon_code,
    })
