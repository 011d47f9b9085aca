"""The schema, as SQLAlchemy Core tables (one metadata; migrations follow it).

Conventions: surrogate integer ids, natural keys (``external_id``) unique; times are naive UTC
``DateTime``; a row's times follow the run's logical clock (as-of, now) and only ``recorded_at``
holds the wall clock (when the row was written), so reruns and backfills write the same rows;
money is ``Numeric(12, 2)``; free-form data is JSON (JSONB on PostgreSQL).
Status columns are short strings so both databases read the same.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

metadata = sa.MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

Json = sa.JSON().with_variant(JSONB(), "postgresql")
Money = sa.Numeric(12, 2)


def _ts(name: str, **kw: object) -> sa.Column:
    return sa.Column(name, sa.DateTime(), **kw)  # type: ignore[arg-type]


def _recorded_at() -> sa.Column:
    """When the row was written, by the wall clock (every other time is the run's clock)."""
    return _ts("recorded_at", nullable=False, server_default=sa.func.current_timestamp())


def _customer_fk(nullable: bool = False) -> sa.Column:
    return sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id", ondelete="CASCADE"),
                     nullable=nullable, index=True)


# --- store data -------------------------------------------------------------------------------

customers = sa.Table(
    "customers", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("external_id", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.String(200)),
    sa.Column("email", sa.String(254), index=True),
    sa.Column("phone", sa.String(16), index=True),  # E.164
    sa.Column("locale", sa.String(16)),  # BCP 47, e.g. en, zh-CN
    sa.Column("timezone", sa.String(64)),  # IANA; NULL means the settings default
    sa.Column("city", sa.String(100)),
    sa.Column("country", sa.String(2)),
    sa.Column("consent_email", sa.Boolean, nullable=False, server_default=sa.false()),
    _ts("consent_email_at"),
    sa.Column("consent_sms", sa.Boolean, nullable=False, server_default=sa.false()),
    _ts("consent_sms_at"),
    sa.Column("attributes", Json),
    _ts("signed_up_at"),
    _ts("created_at", nullable=False, server_default=sa.func.current_timestamp()),
    _ts("updated_at", nullable=False, server_default=sa.func.current_timestamp()),
)

orders = sa.Table(
    "orders", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("external_id", sa.String(64), nullable=False, unique=True),
    _customer_fk(),
    _ts("ordered_at", nullable=False, index=True),
    sa.Column("amount", Money, nullable=False),
    sa.Column("currency", sa.String(3)),
    sa.Column("quantity", sa.Integer),
    sa.Column("status", sa.String(16), nullable=False, server_default="completed", index=True),
    # The code the customer redeemed, as the shop recorded it (coupon attribution joins on it).
    sa.Column("coupon_code", sa.String(64), index=True),
    sa.Column("points_redeemed", sa.Integer),  # loyalty points the customer spent on it
    sa.CheckConstraint("amount >= 0", name="amount_non_negative"),
)
sa.Index("ix_orders_customer_ordered", orders.c.customer_id, orders.c.ordered_at)

order_items = sa.Table(
    "order_items", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("order_id", sa.Integer, sa.ForeignKey("orders.id", ondelete="CASCADE"),
              nullable=False, index=True),
    sa.Column("line_no", sa.Integer, nullable=False),
    sa.Column("sku", sa.String(64), nullable=False, index=True),
    sa.Column("product_name", sa.String(200)),
    sa.Column("quantity", sa.Integer, nullable=False, server_default="1"),
    sa.Column("unit_price", Money),
    sa.UniqueConstraint("order_id", "line_no"),
)

# Per-customer purchase aggregates over every purchase (orders not in NOT_PURCHASES), kept in
# step with the orders by every writer of orders (clm_core.lifecycle.aggregates), so the nightly
# features read one row per customer instead of aggregating the whole history.
customer_purchase_aggregates = sa.Table(
    "customer_purchase_aggregates", metadata,
    sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("n_orders", sa.Integer, nullable=False),
    sa.Column("purchase_days", sa.Integer, nullable=False),  # distinct UTC calendar days
    _ts("first_order_at", nullable=False),
    _ts("last_order_at", nullable=False, index=True),
    sa.Column("total_spend", sa.Numeric(14, 2), nullable=False),
    sa.Column("first_day_spend", sa.Numeric(14, 2), nullable=False),
)

# The orders the aggregates were last brought in step with (one row, id 1): their count and
# highest id. A write of orders that did not maintain the aggregates changes one of them, and
# the features then read the orders until the aggregates are rebuilt.
purchase_aggregates_state = sa.Table(
    "purchase_aggregates_state", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("orders", sa.Integer, nullable=False),
    sa.Column("max_order_id", sa.Integer),
    _recorded_at(),
)

events = sa.Table(
    "events", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("external_id", sa.String(64), unique=True),  # dedupe when the source has ids
    _customer_fk(),
    sa.Column("event_type", sa.String(64), nullable=False),
    _ts("occurred_at", nullable=False),
    sa.Column("properties", Json),
)
sa.Index("ix_events_type_time", events.c.event_type, events.c.occurred_at)

# --- lifecycle --------------------------------------------------------------------------------

model_fits = sa.Table(
    "model_fits", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("model", sa.String(32), nullable=False),  # bgnbd, mbgnbd, gamma_gamma
    sa.Column("params", Json, nullable=False),
    sa.Column("log_likelihood", sa.Float),
    sa.Column("penalizer", sa.Float, nullable=False, server_default="0"),
    sa.Column("time_unit", sa.String(8), nullable=False),  # day | week
    _ts("window_start"),
    _ts("window_end", nullable=False),  # as-of / calibration end
    _ts("holdout_end"),
    sa.Column("n_customers", sa.Integer, nullable=False),
    sa.Column("diagnostics", Json),  # e.g. the calibration/holdout table
    _recorded_at(),
    sa.Column("run_id", sa.String(64)),
)

customer_scores = sa.Table(
    "customer_scores", metadata,
    sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("as_of", sa.Date, nullable=False),
    sa.Column("fit_id", sa.Integer, sa.ForeignKey("model_fits.id", ondelete="SET NULL")),
    sa.Column("n_orders", sa.Integer, nullable=False, server_default="0"),
    sa.Column("purchase_days", sa.Integer, nullable=False, server_default="0"),
    _ts("first_order_at"),
    _ts("last_order_at"),
    sa.Column("total_spend", sa.Float, nullable=False, server_default="0"),
    sa.Column("avg_order_value", sa.Float),
    sa.Column("days_since_last_order", sa.Float),
    sa.Column("frequency", sa.Float),
    sa.Column("recency", sa.Float),
    sa.Column("T", sa.Float),
    sa.Column("monetary_value", sa.Float),
    sa.Column("p_alive", sa.Float),
    sa.Column("expected_purchases_30d", sa.Float),
    sa.Column("expected_purchases_90d", sa.Float),
    sa.Column("expected_aov", sa.Float),
    sa.Column("clv_12m", sa.Float),
    sa.Column("r_score", sa.SmallInteger),
    sa.Column("f_score", sa.SmallInteger),
    sa.Column("m_score", sa.SmallInteger),
    # Neither stage nor segment is indexed: none picks out few rows (migration 0014).
    sa.Column("rfm_segment", sa.String(32)),
    sa.Column("stage", sa.String(32)),
    _ts("stage_since"),
    _recorded_at(),
    sa.Column("run_id", sa.String(64)),
)

stage_transitions = sa.Table(
    "stage_transitions", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    _customer_fk(),
    sa.Column("from_stage", sa.String(32)),  # NULL for a customer's first stage
    sa.Column("to_stage", sa.String(32), nullable=False),
    _ts("transitioned_at", nullable=False),  # the scoring's as-of day (00:00)
    sa.Column("as_of", sa.Date, nullable=False),
    _ts("stage_since"),  # when the new stage began: the as-of day, or e.g. a comeback purchase
    sa.Column("run_id", sa.String(64)),
    _recorded_at(),
)
sa.Index("ix_stage_transitions_as_of_to", stage_transitions.c.as_of, stage_transitions.c.to_stage)
# A customer's latest transition before a day, one seek (the stage before a rerun day:
# lifecycle.transitions.rules_view, lifecycle.features). Without it PostgreSQL walked the as_of
# index back through every earlier transition for each customer, minutes at a million.
sa.Index("ix_stage_transitions_customer_as_of", stage_transitions.c.customer_id,
         stage_transitions.c.as_of, stage_transitions.c.id)

# --- journeys ---------------------------------------------------------------------------------

journey_versions = sa.Table(
    "journey_versions", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("journey", sa.String(100), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("definition", Json, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    _ts("created_at", nullable=False),
    sa.UniqueConstraint("journey", "version"),
)

journey_enrollments = sa.Table(
    "journey_enrollments", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("journey", sa.String(100), nullable=False),
    sa.Column("journey_version", sa.Integer, nullable=False),
    _customer_fk(),
    sa.Column("entry_seq", sa.Integer, nullable=False),  # 1 for the first entry, 2 for re-entry...
    sa.Column("status", sa.String(16), nullable=False),  # active, completed, exited, converted
    sa.Column("is_control", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("variant", sa.String(64)),
    sa.Column("current_step", sa.String(64)),
    _ts("step_due_at"),  # when the current step may run (end of a wait)
    _ts("entered_at", nullable=False),
    _ts("exited_at"),
    sa.Column("exit_reason", sa.String(64)),
    _ts("converted_at"),
    sa.Column("goal", sa.String(64)),
    sa.Column("state", Json),  # per-enrollment engine state (split choices, visited steps)
    _recorded_at(),
    sa.UniqueConstraint("journey", "customer_id", "entry_seq"),
)
sa.Index("ix_journey_enrollments_status_due", journey_enrollments.c.status,
         journey_enrollments.c.step_due_at)
# Each version's earliest active entry (journeys.store.active_versions), one seek a version.
sa.Index("ix_journey_enrollments_active_entry", journey_enrollments.c.status,
         journey_enrollments.c.journey, journey_enrollments.c.journey_version,
         journey_enrollments.c.entered_at)

# --- measurement ------------------------------------------------------------------------------

attributions = sa.Table(
    "attributions", metadata,
    # one row per enrollment (treated and control), rebuilt from the tables above by
    # clm_core.measure.attribution; nothing else writes it
    sa.Column("enrollment_id", sa.Integer,
              sa.ForeignKey("journey_enrollments.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("journey", sa.String(100), nullable=False, index=True),
    sa.Column("journey_version", sa.Integer, nullable=False),
    _customer_fk(),
    sa.Column("is_control", sa.Boolean, nullable=False),
    sa.Column("global_control", sa.Boolean, nullable=False),
    sa.Column("variant", sa.String(64)),
    _ts("entered_at", nullable=False),
    _ts("window_end", nullable=False),  # entered_at + the journey's conversion window
    sa.Column("window_complete", sa.Boolean, nullable=False),  # window_end <= measured_at
    sa.Column("goal", sa.String(64)),
    _ts("goal_at"),
    sa.Column("orders", sa.Integer, nullable=False),
    sa.Column("revenue", sa.Float, nullable=False),
    sa.Column("pre_revenue", sa.Float, nullable=False),  # same length window before entry
    sa.Column("messages_sent", sa.Integer, nullable=False),
    sa.Column("coupons_issued", sa.Integer, nullable=False),
    sa.Column("coupons_redeemed", sa.Integer, nullable=False),
    sa.Column("coupon_cost", sa.Float, nullable=False),
    sa.Column("delivered", sa.Integer, nullable=False),
    sa.Column("opened", sa.Integer, nullable=False),
    sa.Column("clicked", sa.Integer, nullable=False),
    # last-touch view (secondary): the last message sent before the first order in the window
    sa.Column("last_touch_step", sa.String(64)),
    sa.Column("last_touch_channel", sa.String(16)),
    _ts("measured_at", nullable=False),  # the logical time the attribution was computed for
    sa.Column("run_id", sa.String(64)),
)

# --- delivery ---------------------------------------------------------------------------------

messages = sa.Table(
    "messages", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("idempotency_key", sa.String(128), nullable=False, unique=True),
    sa.Column("enrollment_id", sa.Integer,
              sa.ForeignKey("journey_enrollments.id", ondelete="SET NULL"), index=True),
    _customer_fk(),
    sa.Column("journey", sa.String(100)),
    sa.Column("journey_version", sa.Integer),
    sa.Column("step_id", sa.String(64)),
    sa.Column("channel", sa.String(16), nullable=False),  # email | sms | webhook
    sa.Column("template", sa.String(200)),
    sa.Column("coupon", Json),  # coupon spec of the step, if any
    sa.Column("tags", Json),
    # pending | deferred | skipped | claimed | sent | failed | unknown | cancelled
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(64)),  # reason code of the last decision
    _ts("send_after", nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("lease_owner", sa.String(64)),
    _ts("lease_expires_at"),
    sa.Column("provider", sa.String(32)),
    sa.Column("provider_message_id", sa.String(128)),
    sa.Column("error_code", sa.String(64)),
    sa.Column("error_message", sa.Text),
    _ts("created_at", nullable=False),
    _ts("updated_at", nullable=False),
    _ts("sent_at"),
    sa.Column("flow_run_id", sa.String(64)),
    _recorded_at(),
    # What the provider reported after accepting: delivered | bounced | deferred | undelivered,
    # applied by meaning (a late 'delivered' never undoes 'bounced'); the time is the event's.
    sa.Column("delivery_status", sa.String(16)),
    _ts("delivery_at"),
    # sha256 of recipient and text, set when sending starts: finds the message again in a
    # provider's list of sent messages when its outcome is unknown.
    sa.Column("content_digest", sa.String(64)),
)
sa.Index("ix_messages_status_send_after", messages.c.status, messages.c.send_after)
sa.Index("ix_messages_sent_at", messages.c.sent_at)  # the deliverability guard's window
# Provider callbacks without our key (Twilio's status callbacks, a bounce that lost its
# custom args) find their message by the provider's id: without an index, a full scan each.
sa.Index("ix_messages_provider_message_id", messages.c.provider_message_id)

coupons = sa.Table(
    "coupons", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("code", sa.String(64), nullable=False, unique=True),
    sa.Column("idempotency_key", sa.String(128), nullable=False, unique=True),
    _customer_fk(),
    sa.Column("message_id", sa.Integer, sa.ForeignKey("messages.id", ondelete="SET NULL")),
    sa.Column("provider", sa.String(32), nullable=False),
    sa.Column("provider_ref", sa.String(128)),
    sa.Column("kind", sa.String(16), nullable=False),  # percent | amount
    sa.Column("value", Money, nullable=False),
    sa.Column("currency", sa.String(3)),
    _ts("expires_at"),
    sa.Column("status", sa.String(16), nullable=False),  # issued | redeemed | expired | voided
    _ts("created_at", nullable=False),
)

suppressions = sa.Table(
    "suppressions", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("address", sa.String(254), nullable=False),  # email or E.164 phone
    sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id", ondelete="SET NULL")),
    sa.Column("reason", sa.String(64), nullable=False),  # unsubscribed, opted_out, invalid, bounced
    sa.Column("source", sa.String(64)),  # provider name, unsubscribe link, import
    _ts("created_at", nullable=False),
    sa.UniqueConstraint("channel", "address"),
)

provider_events = sa.Table(
    "provider_events", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("provider", sa.String(16), nullable=False),  # sendgrid | mailgun | twilio | aliyun
    sa.Column("event_id", sa.String(100), nullable=False),  # the provider's id: dedupes retries
    # accepted delivered deferred bounced undelivered opened clicked complained unsubscribed
    # inbound other (clm_core.feedback.events)
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("channel", sa.String(16), nullable=False),
    _ts("occurred_at", nullable=False),  # the provider's time of the event
    _ts("recorded_at", nullable=False),  # wall clock at ingestion
    sa.Column("message_id", sa.Integer, sa.ForeignKey("messages.id", ondelete="SET NULL"),
              index=True),
    sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id", ondelete="SET NULL")),
    sa.Column("address", sa.String(254)),
    sa.Column("permanent", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("machine", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("code", sa.String(64)),
    sa.Column("detail", Json),
    sa.UniqueConstraint("provider", "event_id"),
)
sa.Index("ix_provider_events_kind_time", provider_events.c.kind, provider_events.c.occurred_at)
sa.Index("ix_provider_events_address_kind", provider_events.c.address, provider_events.c.kind)

channel_halts = sa.Table(
    "channel_halts", metadata,
    sa.Column("channel", sa.String(16), primary_key=True),
    sa.Column("reason", sa.Text, nullable=False),
    _ts("halted_at", nullable=False),
)

# --- loyalty ----------------------------------------------------------------------------------

points_ledger = sa.Table(
    "points_ledger",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("key", sa.String(128), nullable=False, unique=True),  # why the row exists
    _customer_fk(),
    sa.Column(
        "kind", sa.String(16), nullable=False
    ),  # earn bonus reverse redeem expire reward adjust
    sa.Column("points", sa.Integer, nullable=False),
    sa.Column("order_id", sa.Integer, sa.ForeignKey("orders.id", ondelete="SET NULL"), index=True),
    _ts("occurred_at", nullable=False),  # the run's clock
    _ts("expires_at"),
    sa.Column("reason", sa.String(200)),
    _ts("recorded_at", nullable=False),  # wall clock
    sa.Column("run_id", sa.String(64)),
)

loyalty_status = sa.Table(
    "loyalty_status", metadata,
    sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("points_balance", sa.Integer, nullable=False, server_default="0"),
    sa.Column("points_expiring_30d", sa.Integer, nullable=False, server_default="0"),
    sa.Column("tier", sa.String(32), index=True),
    _ts("tier_since"),
    _ts("tier_grace_until"),  # set while the customer qualifies below the tier held
    sa.Column("points_to_next_tier", sa.Float),  # in the qualifying unit (points or spend)
    sa.Column("qualifying", sa.Float),
    _ts("next_expiry_at"),
    _ts("tier_review_at"),  # when the oldest order of the tier window leaves it
    # when the next lot enters the 30-day expiring window (points_expiring_30d changes then)
    _ts("expiring_review_at"),
    _ts("as_of", nullable=False),
)
sa.Index("ix_loyalty_status_next_expiry_at", loyalty_status.c.next_expiry_at)

# One row: how far the evaluations have got, so the next one reads only what changed.
loyalty_state = sa.Table(
    "loyalty_state", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("order_watermark", sa.Integer, nullable=False),  # highest order id evaluated
    sa.Column("pending_watermark", sa.Integer, nullable=False),  # lowest id then still pending
    sa.Column("ledger_watermark", sa.Integer, nullable=False),  # highest ledger id after it
    _ts("last_now", nullable=False),
)

tier_transitions = sa.Table(
    "tier_transitions", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    _customer_fk(),
    sa.Column("from_tier", sa.String(32)),
    sa.Column("to_tier", sa.String(32), nullable=False),
    _ts("transitioned_at", nullable=False),
    _ts("recorded_at", nullable=False),
    sa.Column("run_id", sa.String(64)),
)

# --- operations -------------------------------------------------------------------------------

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column(
        "kind", sa.String(32), nullable=False
    ),  # import, fit, score, plan, dispatch, lifecycle
    _ts("started_at", nullable=False),
    _ts("finished_at"),
    sa.Column("status", sa.String(16), nullable=False),  # running, completed, failed
    sa.Column("summary", Json),
    sa.Column("flow_run_id", sa.String(64)),
)

# --- consent ----------------------------------------------------------------------------------

consent_ledger = sa.Table(
    "consent_ledger",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    # NULL when nobody matches the address (a STOP from an unknown number still suppresses it).
    _customer_fk(nullable=True),
    sa.Column("channel", sa.String(16), nullable=False),  # email | sms
    sa.Column("topic", sa.String(64)),  # NULL: the whole channel
    sa.Column("action", sa.String(16), nullable=False),  # granted | withdrawn
    # import, unsubscribe, preferences, inbound_sms, bounce, complaint, provider_unsubscribe, operator  # noqa: E501  (prose or a URL: clearer whole)
    sa.Column("source", sa.String(32), nullable=False),
    sa.Column("address", sa.String(254)),  # the email or phone the change applies to
    _ts("occurred_at", nullable=False),  # when it happened (the event's own time)
    _ts("recorded_at", nullable=False),  # wall clock of the insert
    sa.Column("evidence_key", sa.String(200), nullable=False, unique=True),  # replay -> no-op
    sa.Column("evidence", Json),  # provider event id, token id, minimal request metadata
    sa.Column("wording_version", sa.String(64)),
)
sa.Index("ix_consent_ledger_subject", consent_ledger.c.customer_id, consent_ledger.c.channel,
         consent_ledger.c.topic, consent_ledger.c.occurred_at)
