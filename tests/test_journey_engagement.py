"""Journeys that use what provider callbacks record: a branch on ``opened within 3d`` and a
goal ``clicked``, on in-memory snapshots and through the condition compiler."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest

from clm_core.conditions import compile_condition
from clm_core.errors import SpecError
from clm_core.journeys.engine import Snapshot, plan
from clm_core.journeys.fields import FIELDS
from clm_core.yamlspec import Locator
from tests.journey_helpers import customers_frame, journey
from tests.test_journey_engine import NO_RULES, NOW, stored

FOLLOW_UP = """
name: follow_up
status: active
entry: {segment: {field: stage, eq: new}}
goals:
  - {id: clicked, event: {type: clicked}}
steps:
  - id: hello
    send: {channel: email, template: hello}
  - id: pause
    wait: 3d
  - id: route
    branch:
      - when: {event: opened, within: 3d}
        goto: thanks
  - id: reminder
    send: {channel: email, template: reminder}
    goto: done
  - id: thanks
    send: {channel: email, template: thanks}
  - id: done
    exit: {}
"""


def test_branch_on_opened_within_3d_and_goal_clicked() -> None:
    j = journey(FOLLOW_UP)
    cust = customers_frame(4, timezone="UTC")
    first = plan([j], Snapshot(cust), NOW, NO_RULES)
    assert first.messages["template"].tolist() == ["hello"] * 4
    later = NOW + timedelta(days=3, hours=1)
    events = pd.DataFrame({
        "customer_id": [1, 2, 3, 3],
        "event_type": ["opened", "opened", "opened", "clicked"],
        # 1 opened a day ago; 2 opened before the window; 3 opened and clicked.
        "occurred_at": [later - timedelta(days=1), later - timedelta(days=5),
                        NOW + timedelta(hours=2), NOW + timedelta(hours=3)]})
    p = plan([j], Snapshot(cust, enrollments=stored(first), events=events), later, NO_RULES)
    sent = p.messages.set_index("customer_id")["template"].to_dict()
    assert sent == {1: "thanks", 2: "reminder", 4: "reminder"}
    e = p.enrollments.set_index("customer_id")
    assert e.loc[3, "goal"] == "clicked" and e.loc[3, "status"] == "converted"


def test_event_condition_is_checked_like_any_other() -> None:
    cond = compile_condition({"event": "opened", "within": "3d"}, FIELDS, Locator("j.yaml", None))
    frame = pd.DataFrame({"days_since_opened": [1.0, 3.0, 3.5, float("nan")]})
    assert cond.mask(frame).tolist() == [True, True, False, False]
    for bad, message in (({"event": "opend", "within": "3d"}, "did you mean 'opened'"),
                         ({"event": "opened"}, "needs 'within'"),
                         ({"event": "opened", "within": "3x"}, "duration"),
                         ({"event": "opened", "within": "3d", "gt": 1}, "unknown key 'gt'")):
        with pytest.raises(SpecError, match=message):
            compile_condition(bad, FIELDS, Locator("j.yaml", None))
