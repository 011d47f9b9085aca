"""The journey language: pydantic models of one ``journeys/<name>.yaml`` file.

The same models validate files (``clm validate``), generate the editors' JSON Schema
(``journeys/journey.schema.json``) and drive the engine. Conditions stay raw YAML here and are
compiled against the customer fields by ``clm_core.journeys.loader``.
"""

from __future__ import annotations

import re
from datetime import time, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)

DURATION_RE = re.compile(r"^\s*(\d+)\s*(m|h|d|w)\s*$")
_UNIT = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ID_PATTERN = r"^[a-z][a-z0-9_]*$"


def parse_duration(value: Any) -> timedelta:
    """'30m', '12h', '3d', '2w' -> timedelta (ValueError otherwise)."""
    if isinstance(value, timedelta):
        return value
    m = DURATION_RE.match(value) if isinstance(value, str) else None
    if not m or int(m.group(1)) == 0:
        raise ValueError("a duration is a positive whole number and a unit m, h, d or w "
                         "(e.g. 30m, 12h, 3d, 2w)")
    return timedelta(**{_UNIT[m.group(2)]: int(m.group(1))})


def format_duration(d: timedelta) -> str:
    secs = int(d.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if secs % size == 0:
            return f"{secs // size}{unit}"
    return f"{secs // 60}m"


def parse_clock(value: Any) -> time:
    """'HH:MM' (24-hour) -> time."""
    if isinstance(value, time):
        return value
    if isinstance(value, int) and not isinstance(value, bool):  # YAML 1.1 reads 9:30 as 570
        raise ValueError(f"write times of day in quotes, e.g. \"09:30\" (got {value!r})")
    m = re.match(r"^([01]?\d|2[0-3]):([0-5]\d)$", value) if isinstance(value, str) else None
    if not m:
        raise ValueError("a time of day is \"HH:MM\" on a 24-hour clock")
    return time(int(m.group(1)), int(m.group(2)))


Duration = Annotated[timedelta, BeforeValidator(parse_duration),
                     WithJsonSchema({"type": "string", "pattern": r"^\s*[1-9]\d*\s*[mhdw]\s*$",
                                     "description": "e.g. 30m, 12h, 3d, 2w"})]
Clock = Annotated[time, BeforeValidator(parse_clock),
                  WithJsonSchema({"type": "string", "pattern": r"^([01]?\d|2[0-3]):[0-5]\d$",
                                  "description": "local time of day, HH:MM"})]
StepId = Annotated[str, Field(pattern=ID_PATTERN, max_length=64)]
Condition = Annotated[dict[str, Any], WithJsonSchema({
    "type": "object", "description": "a condition: {field: NAME, OP: VALUE}, {all: [...]}, "
    "{any: [...]} or {not: {...}}"})]
OnBlock = Literal["defer", "skip", "end"]


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# --- entry ------------------------------------------------------------------------------------

class StageEntry(Spec):
    """Enter when the customer moves into stage ``to`` (optionally only from ``from``)."""

    to: str
    from_: list[str] | None = Field(None, alias="from")

    @field_validator("from_", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class TierEntry(Spec):
    """Enter when the customer moves into loyalty tier ``to`` (any tier when omitted),
    optionally only from the tiers in ``from``, where ``none`` means "was not a member":
    ``{from: none}`` enters every new member, whatever tier they start in."""

    to: str | None = Field(None, min_length=1, max_length=32)
    from_: list[str] | None = Field(None, alias="from")

    @field_validator("from_", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _something(self) -> TierEntry:
        if self.to is None and not self.from_:
            raise ValueError("a tier entry needs 'to' (the tier reached), 'from', or both")
        return self


class EventEntry(Spec):
    """Enter when an event of this type is recorded for the customer."""

    type: str = Field(min_length=1, max_length=64)


class Reentry(Spec):
    """once: never again. rematch: after the customer stopped matching the trigger and a
    ``min_gap`` has passed since leaving. interval: ``every`` after the previous entry."""

    policy: Literal["once", "rematch", "interval"] = "once"
    min_gap: Duration | None = None
    every: Duration | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Reentry:
        if self.policy == "interval" and self.every is None:
            raise ValueError("re-entry policy 'interval' needs 'every' (e.g. every: 90d)")
        if self.policy != "interval" and self.every is not None:
            raise ValueError("'every' belongs to re-entry policy 'interval'")
        if self.policy != "rematch" and self.min_gap is not None:
            raise ValueError("'min_gap' belongs to re-entry policy 'rematch'")
        return self


class Entry(Spec):
    """Exactly one trigger: a stage or tier transition, a segment (condition) or an event type."""

    stage: StageEntry | None = None
    tier: TierEntry | None = None
    segment: Condition | None = None
    event: EventEntry | None = None
    within: Duration = Field(default=timedelta(days=7), json_schema_extra={"default": "7d"},
                             description="how old a transition or event may be and still enroll")
    reentry: Reentry = Field(default_factory=Reentry)

    @model_validator(mode="after")
    def _one_trigger(self) -> Entry:
        given = [k for k in ("stage", "tier", "segment", "event") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("entry needs exactly one trigger: stage, tier, segment or event"
                             + (f" (found {', '.join(given)})" if given else ""))
        return self

    @property
    def trigger(self) -> str:
        if self.stage or self.tier:
            return "stage" if self.stage else "tier"
        return "segment" if self.segment is not None else "event"


# --- goals ------------------------------------------------------------------------------------

class OrderGoal(Spec):
    min_amount: float = Field(0, ge=0)


class Goal(Spec):
    """A goal reached after entry: an order, a stage, an event, or a condition becoming true."""

    id: StepId
    order: OrderGoal | None = None
    stage: list[str] | None = None
    event: EventEntry | None = None
    condition: Condition | None = None

    @field_validator("stage", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _one_kind(self) -> Goal:
        given = [
            k for k in ("order", "stage", "event", "condition") if getattr(self, k) is not None
        ]
        if len(given) != 1:
            raise ValueError("a goal is exactly one of order, stage, event or condition"
                             + (f" (found {', '.join(given)})" if given else ""))
        return self


# --- contact policy ---------------------------------------------------------------------------

class QuietHours(Spec):
    """No message is scheduled from ``start`` to ``end`` in the customer's local time."""

    start: Clock = Field(time(21, 0), json_schema_extra={"default": "21:00"})
    end: Clock = Field(time(9, 0), json_schema_extra={"default": "09:00"})
    enabled: bool = True

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.enabled and self.start == self.end:
            raise ValueError("quiet hours start and end are equal; use enabled: false to turn "
                             "them off")
        return self


class Cap(Spec):
    """At most ``max`` messages (of ``channel`` and/or carrying ``tag``) per ``window``."""

    channel: Literal["email", "sms"] | None = None
    tag: str | None = None
    max: int = Field(ge=1)
    window: Duration

    @property
    def key(self) -> str:
        return f"{self.channel or 'any'}/{self.tag or 'any'}/{self.max}per{format_duration(self.window)}"  # noqa: E501  (prose or a URL: clearer whole)


class ContactPolicy(Spec):
    """What happens to a message a rule blocks: deferred to the next allowed time, skipped
    (the journey goes on) or the enrollment ends."""

    consent: Literal["skip", "end"] = "skip"
    quiet_hours: OnBlock = "defer"
    frequency: OnBlock = "defer"
    quiet_hours_window: QuietHours | None = Field(
        None, description="replaces the project's quiet hours for this journey")
    caps: list[Cap] = Field(default_factory=list,
                            description="caps added to the project's caps for this journey")


class Holdout(Spec):
    percent: float = Field(0, ge=0, le=100)
    salt: str | None = None


# --- steps ------------------------------------------------------------------------------------

class Coupon(Spec):
    kind: Literal["percent", "amount"]
    value: float = Field(gt=0)
    currency: str | None = Field(None, pattern=r"^[A-Z]{3}$")
    expires_in_days: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _sane(self) -> Coupon:
        if self.kind == "percent" and self.value > 100:
            raise ValueError("a percent coupon is at most 100")
        return self


class Send(Spec):
    channel: Literal["email", "sms"]
    template: str = Field(min_length=1, max_length=200)
    coupon: Coupon | None = None
    tags: list[str] = Field(default_factory=list)


class WaitUntil(Spec):
    """Wait ``duration`` (optional), then until the next ``until`` local time on ``weekdays``."""

    duration: Duration | None = None
    until: Clock | None = None
    weekdays: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] | None = None

    @model_validator(mode="after")
    def _something(self) -> WaitUntil:
        if self.duration is None and self.until is None:
            raise ValueError("a wait needs a duration (e.g. 3d) or a local time 'until'")
        if self.weekdays is not None and self.until is None:
            raise ValueError("'weekdays' needs 'until' (the local time to wait for)")
        if self.weekdays is not None and not self.weekdays:
            raise ValueError("'weekdays' must name at least one day")
        return self


class Case(Spec):
    when: Condition
    goto: StepId


class Variant(Spec):
    variant: StepId
    weight: float = Field(gt=0)
    goto: StepId


class ExitAction(Spec):
    reason: str = Field("completed", pattern=ID_PATTERN, max_length=64)


class StepBase(Spec):
    id: StepId


class SendStep(StepBase):
    send: Send
    goto: StepId | None = None


WaitSpec = Annotated[
    Annotated[Duration, Tag("Duration")] | Annotated[WaitUntil, Tag("WaitUntil")],
    Discriminator(lambda v: "WaitUntil" if isinstance(v, (dict, WaitUntil)) else "Duration"),
]


class WaitStep(StepBase):
    wait: WaitSpec
    goto: StepId | None = None

    @property
    def spec(self) -> WaitUntil:
        return self.wait if isinstance(self.wait, WaitUntil) else WaitUntil(duration=self.wait)


class BranchStep(StepBase):
    branch: list[Case] = Field(min_length=1)
    else_: StepId | None = Field(None, alias="else",
                                 description="where to go when no case matches (default: next)")


class SplitStep(StepBase):
    split: list[Variant] = Field(min_length=2)


class ExitStep(StepBase):
    exit: ExitAction = Field(default_factory=ExitAction)

    @field_validator("exit", mode="before")
    @classmethod
    def _empty(cls, v: Any) -> Any:
        return {} if v is None else v


STEP_KINDS = ("send", "wait", "branch", "split", "exit")


def _step_kind(v: Any) -> str | None:
    if isinstance(v, dict):
        kinds = [k for k in STEP_KINDS if k in v]
        return kinds[0].capitalize() if len(kinds) == 1 else None
    kind = getattr(v, "kind", None)
    return kind.capitalize() if kind else None


Step = Annotated[
    Annotated[SendStep, Tag("Send")] | Annotated[WaitStep, Tag("Wait")]
    | Annotated[BranchStep, Tag("Branch")] | Annotated[SplitStep, Tag("Split")]
    | Annotated[ExitStep, Tag("Exit")],
    Discriminator(_step_kind, custom_error_type="step_kind",
                  custom_error_message="a step has an id and exactly one of send, wait, branch, "
                                       "split, exit"),
]


for _cls, _kind in ((SendStep, "send"), (WaitStep, "wait"), (BranchStep, "branch"),
                    (SplitStep, "split"), (ExitStep, "exit")):
    _cls.kind = _kind  # type: ignore[attr-defined,union-attr]


# --- the journey ------------------------------------------------------------------------------

class Journey(Spec):
    """One journey file."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True,
                              json_schema_extra={"title": "CLM journey"})

    name: StepId
    description: str = ""
    status: Literal["draft", "active", "paused"] = "draft"
    tags: list[str] = Field(default_factory=list, description="for frequency caps and reports")
    priority: int = Field(0, description="higher goes first when caps allow only some messages")
    entry: Entry
    audience: Condition | None = Field(
        None, description="checked at entry and before every message")
    exit_when_audience_lost: bool = True
    goals: list[Goal] = Field(default_factory=list)
    exit_on_goal: bool = True
    conversion_window: Duration = Field(
        default=timedelta(days=14), json_schema_extra={"default": "14d"},
        description="how long after entry an order counts for the journey in attribution and lift")
    holdout: Holdout = Field(default_factory=Holdout)
    contact_policy: ContactPolicy = Field(default_factory=ContactPolicy)
    on_edit: Literal["stay", "move", "drain"] = Field(
        "stay", description="customers already in an edited active journey: stay on their "
        "version, move to the new one by step id, or drain (leave at the next evaluation)")
    steps: list[Step] = Field(min_length=1)

    def step_ids(self) -> list[str]:
        return [s.id for s in self.steps]


class ProjectPolicy(Spec):
    """The ``[journeys]`` section of clm.toml: rules across all journeys."""

    quiet_hours: QuietHours = Field(default_factory=QuietHours)
    caps: list[Cap] = Field(default_factory=lambda: [
        Cap(channel="email", max=2, window=timedelta(days=7)),
        Cap(channel="sms", max=1, window=timedelta(days=7)),
    ])
    global_control_percent: float = Field(0, ge=0, le=100)
    global_control_salt: str = "clm-global-control"
    # Not a marketing rule: how many customers an evaluation reads and plans at a time, so
    # its memory follows this number and not the store's size (about 2 KB a customer the
    # night after a store's first scoring, when every customer is read).
    customers_per_pass: int = Field(250_000, ge=1)
