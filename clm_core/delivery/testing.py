"""Fixtures for delivery tests and benchmarks: a filled outbox, minimal templates, a project."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from clm_core.db import tables as t
from clm_core.db.bulk import write_frame
from clm_core.runs import utcnow

TEMPLATES = {
    "winback/en/subject.txt.j2": "We miss you, {{ customer.first_name }}",
    "winback/en/body.html.j2": (
        "<html><head><style>p { color: #333; }</style></head><body>"
        "<p>Hi {{ customer.first_name }}, it has been a while.</p>"
        "{% if coupon %}<p>Use <b>{{ coupon.code }}</b> for {{ coupon.value }}% off.</p>{% endif %}"
        "<ul>{% for r in recommendations %}<li>{{ r.name }}</li>{% endfor %}</ul>"
        '<p><a href="{{ links.unsubscribe }}">Unsubscribe</a></p></body></html>'
    ),
    "winback/en/body.txt.j2": (
        "Hi {{ customer.first_name }}, it has been a while.\n"
        "{% if coupon %}Use {{ coupon.code }} for {{ coupon.value }}% off.\n{% endif %}"
        "Unsubscribe: {{ links.unsubscribe }}"
    ),
    "winback/zh-CN/subject.txt.j2": "{{ customer.first_name }}，好久不见",
    "winback/zh-CN/body.html.j2": "<p>{{ customer.first_name }}，好久不见。</p>",
    "winback/zh-CN/body.txt.j2": "{{ customer.first_name }}，好久不见。",
    "winback/en/sms.txt.j2": "{{ store.name }}: hi {{ customer.first_name }}, we miss you. Reply STOP to opt out.",  # noqa: E501  (prose or a URL: clearer whole)
    "winback/zh-CN/sms.txt.j2": "【{{ store.name }}】{{ customer.first_name }}，好久不见。拒收请回复R",  # noqa: E501  (prose or a URL: clearer whole)
}


def write_templates(root: Path, extra: dict[str, str] | None = None) -> Path:
    for rel, text in {**TEMPLATES, **(extra or {})}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def write_project(root: Path, delivery: dict[str, Any], database_url: str) -> Path:
    """A project directory with clm.toml (``[delivery]`` as given) and the test templates."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["[clm]", f"database_url = {value(database_url)}", "", "[delivery]"]
    tables = []
    for k, v in delivery.items():
        if isinstance(v, dict):
            for name, body in v.items():
                tables += ["", f"[delivery.{k}.{name}]"] + [
                    f"{a} = {value(b)}" for a, b in body.items()
                ]
        else:
            lines.append(f"{k} = {value(v)}")
    root.mkdir(parents=True, exist_ok=True)
    (root / "clm.toml").write_text("\n".join(lines + tables) + "\n", encoding="utf-8")
    write_templates(root / "templates")
    return root


def seed_outbox(engine: Engine, n: int, *, channel: str = "email", template: str = "winback",
                coupon: dict[str, Any] | None = None, locale: str = "en", prefix: str = "m",
                consent: bool = True) -> list[str]:
    """``n`` customers with one due message each; returns the messages' idempotency keys."""
    now = utcnow()
    with engine.connect() as conn:
        start = (conn.scalar(sa.select(sa.func.max(t.customers.c.id))) or 0) + 1
    ids = range(start, start + n)
    customers = pd.DataFrame({
        "id": list(ids), "external_id": [f"{prefix}-cust-{i:07d}" for i in ids],
        "name": [f"Customer{i} Test" for i in ids],
        "email": [f"customer{i}@example.com" for i in ids],
        "phone": [f"+1202555{i % 10_000:04d}" for i in ids] if n <= 10_000 else
                 [f"+1202{i % 10_000_000:07d}" for i in ids],
        "locale": locale, "timezone": "UTC", "consent_email": consent, "consent_sms": consent,
        "created_at": now, "updated_at": now})
    keys = [f"{prefix}:{channel}:{i}" for i in ids]
    messages = pd.DataFrame(
        {
            "idempotency_key": keys,
            "customer_id": list(ids),
            "journey": "winback",
            "journey_version": 1,
            "step_id": "email_1",
            "channel": channel,
            "template": template,
            "coupon": [coupon] * n,
            "tags": [["winback"]] * n,
            "status": "pending",
            "send_after": now - timedelta(minutes=1),
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
        }
    )
    with engine.begin() as conn:
        write_frame(conn, t.customers, customers)
        write_frame(conn, t.messages, messages)
    return keys


def statuses(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(t.messages.c.status, sa.func.count())
                                 .group_by(t.messages.c.status)).all())
