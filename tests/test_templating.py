"""Template rendering: locale fallback, sandbox, undefined variables, CSS inlining, SMS cost."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from clm_core.db import tables as t
from clm_core.errors import TemplateRenderError
from clm_core.templating import TemplateStore, locale_chain, sample_context, sms_cost


def write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")


@pytest.fixture
def store(tmp_path: Path) -> TemplateStore:
    write(tmp_path, "_layouts/email.html.j2",
          "<html><head><style>.cta{color:#c00}</style></head><body>{% block body %}{% endblock %}"
          "<p><a href=\"{{ links.unsubscribe }}\">Unsubscribe</a></p></body></html>")
    write(tmp_path, "hello/en/subject.txt.j2", "Hello\n {{ customer.first_name }}!")
    write(tmp_path, "hello/en/body.html.j2", "{% extends '_layouts/email.html.j2' %}"
          "{% block body %}<p class=\"cta\">{{ customer.name }} & co</p>{% endblock %}")
    write(tmp_path, "hello/en/body.txt.j2", "Hi {{ customer.name }}")
    write(tmp_path, "hello/zh/subject.txt.j2", "你好 {{ customer.first_name }}")
    write(tmp_path, "hello/zh/body.html.j2", "<p>{{ customer.name }}</p>")
    write(tmp_path, "hello/zh/body.txt.j2", "{{ customer.name }}")
    write(tmp_path, "nudge/en/sms.txt.j2", "{{ customer.first_name }}, {{ coupon.value }}% off: "
          "{{ coupon.code }}. Reply STOP to opt out")
    write(tmp_path, "evil/en/sms.txt.j2", "{{ ''.__class__.__mro__[1].__subclasses__() }}")
    write(tmp_path, "typo/en/sms.txt.j2", "Hi\n{{ customer.frist_name }}")
    return TemplateStore(tmp_path, default_locale="en")


def test_email_renders_with_inlined_css_and_escaping(store: TemplateStore) -> None:
    ctx = sample_context("en")
    ctx["customer"]["name"] = "<b>Alex</b>"
    mail = store.render_email("hello", "en-US", ctx)
    assert mail.locale == "en"
    assert mail.subject == "Hello Alex!"
    assert 'style="color: #c00;"' in mail.html and "<style>" not in mail.html
    assert "&lt;b&gt;Alex&lt;/b&gt; &amp; co" in mail.html
    assert ctx["links"]["unsubscribe"] in mail.html
    assert mail.text == "Hi <b>Alex</b>\n"  # plain text is not HTML-escaped


def test_locale_falls_back_to_language_then_default(store: TemplateStore) -> None:
    assert store.render_email("hello", "zh-CN", sample_context("zh-CN")).locale == "zh"
    assert store.render_email("hello", "de-DE", sample_context("de-DE")).locale == "en"
    assert locale_chain("zh-CN", "en") == ["zh-CN", "zh", "en"]


def test_sandbox_blocks_python_internals(store: TemplateStore) -> None:
    with pytest.raises(TemplateRenderError, match="sandbox") as info:
        store.render_sms("evil", "en", sample_context())
    assert "evil/en/sms.txt.j2:1" in str(info.value)


def test_undefined_variable_names_file_and_line(store: TemplateStore) -> None:
    with pytest.raises(TemplateRenderError) as info:
        store.render_sms("typo", "en", sample_context())
    assert "typo/en/sms.txt.j2:2" in str(info.value)
    assert "frist_name" in str(info.value)


def test_missing_template_suggests_a_name(store: TemplateStore) -> None:
    with pytest.raises(TemplateRenderError, match="did you mean 'nudge'"):
        store.render_sms("nudgee", "en", sample_context())
    assert store.names("sms") == ["evil", "nudge", "typo"]
    assert store.names("email") == ["hello"]


def test_sms_reports_encoding_and_segments(store: TemplateStore) -> None:
    sms = store.render_sms("nudge", "en", sample_context())
    assert sms.text.startswith("Alex, 15% off: CLM-7K3Q-9XWD")
    assert (sms.encoding, sms.segments) == ("GSM-7", 1)


@pytest.mark.parametrize("text,expected", [
    ("a" * 160, ("GSM-7", 160, 1)),
    ("a" * 161, ("GSM-7", 161, 2)),
    ("a" * 306, ("GSM-7", 306, 2)),
    ("a" * 307, ("GSM-7", 307, 3)),
    ("€" * 80, ("GSM-7", 160, 1)),  # extension characters count twice
    ("你" * 70, ("UCS-2", 70, 1)),
    ("你" * 71, ("UCS-2", 71, 2)),
    ("a" * 60 + "😀", ("UCS-2", 62, 1)),  # an emoji is two UTF-16 units
])
def test_sms_cost(text: str, expected: tuple[str, int, int]) -> None:
    assert sms_cost(text) == expected


def test_preview_and_dispatch_address_a_customer_by_the_same_name(
        tmp_path: Path, engine: sa.Engine) -> None:
    """``clm preview`` for a real customer and the dispatcher's batch context give the same
    ``customer.first_name``: the first word of a spaced name, a Chinese name whole."""
    from clm_core.delivery.context import load_batch
    from clm_core.journeys.preview import customer_context
    from clm_core.templating import first_name

    assert first_name("Alex Morgan") == "Alex" and first_name("王芳") == "王芳"
    assert first_name(None) == "" and first_name("  ") == ""
    with engine.begin() as conn:
        ids = [conn.execute(t.customers.insert().values(
            external_id=ext, name=name, locale=locale, email=f"{ext}@example.com",
            created_at=datetime(2026, 1, 1), updated_at=datetime(2026, 1, 1)))
            .inserted_primary_key[0] for ext, name, locale in
            (("p-en", "Alex Morgan", "en"), ("p-zh", "王芳", "zh-CN"))]
    rows = [{"id": i, "customer_id": cid, "idempotency_key": f"k{i}", "channel": "email"}
            for i, cid in enumerate(ids)]
    batch = load_batch(engine, rows, None)
    for cid, ext in zip(ids, ("p-en", "p-zh")):
        previewed, _ = customer_context(engine, ext)
        assert previewed["first_name"] == batch.customers[cid]["first_name"]
    assert batch.customers[ids[1]]["first_name"] == "王芳"
