"""The template source and output checks on their own."""

from __future__ import annotations

from pathlib import Path

import pytest

from clm_core.journeys import template_checks as tc
from clm_core.templating import TemplateStore


@pytest.mark.parametrize("text, line, column, what", [
    ('<a href="{ links.shop }">', 1, 10, "single braces"),
    ("Hi {customer.first_name},", 1, 4, "single braces"),
    ("Hi {{ customer.first_name }\nnext line {{ x }}", 1, 4, "opened with {{ but closed with }"),
    ("\n\nHi { customer.first_name }}", 3, 4, "opened with { but closed with }}"),
    ("Code: ${coupon.code} today", 1, 7, "${...} is not a placeholder"),
    ("Code: ${ coupon.code | upper }", 1, 7, "${...} is not a placeholder"),
])
def test_fake_placeholders_are_found_with_their_position(text: str, line: int, column: int,
                                                          what: str) -> None:
    found = tc.fake_placeholders(text, "t.j2")
    assert [(p.line, p.column) for p in found] == [(line, column)], found
    assert what in found[0].message and found[0].severity == "error"


@pytest.mark.parametrize("text", [
    "Hi {{ customer.first_name }}, {{ links.shop }}",
    "{% if coupon %}{{ coupon.code }}{% endif %}{# a { comment } #}",
    "<style>p { margin: 0; } .a{color:#fff}} @media (x) { .b { padding: 2px } }</style>",
    "{% raw %}{ literally }{% endraw %}",
    "{{ {'a': 1}['a'] }} costs $5 {not a name}",
    "{% set d = {'k': 'v'} %}{{ d.k }}",
])
def test_real_placeholders_css_and_raw_text_pass(text: str) -> None:
    assert tc.fake_placeholders(text, "t.j2") == []


def test_text_outside_blocks_of_a_child_template(tmp_path: Path) -> None:
    store = TemplateStore(tmp_path)
    child = ('{% extends "base.j2" %}\n{% import "m.j2" as m %}\n{% set x = 1 %}\n'
             "Lost words\n{% block content %}kept{% endblock %}\n{% if x %}{{ x }}{% endif %}\n"
             "{% macro f() %}fine{% endmacro %}\n")
    found = tc.text_outside_blocks(store.env, child, "child.j2")
    assert [p.line for p in found] == [4, 6], found
    assert "'Lost words' is outside every block" in found[0].message
    # a template that extends nothing renders all its text
    assert tc.text_outside_blocks(store.env, "Lost words\n{{ x }}", "page.j2") == []


@pytest.mark.parametrize("url, ok", [
    ("https://shop.example.com/a?b=1", True), ("http://127.0.0.1:8080/x", True),
    ("mailto:help@example.com", True), ("HTTPS://EXAMPLE.COM", True),
    ("/shop", False), ("shop.example.com", False), ("#top", False), ("", False),
    ("{ links.shop }", False), ("https://", False), ("javascript:alert(1)", False),
    ("mailto:", False), ("ftp://example.com/f", False),
])
def test_absolute_links(url: str, ok: bool) -> None:
    assert tc.is_absolute(url) is ok


def test_links_in_rendered_html_not_in_css_or_scripts() -> None:
    page = (
        '<style>a{background:url(x.png)}</style><a href="/x">x</a>'
        '<img src="https://cdn.example.com/i.png"><a href="https://a.example.com/?a=1&amp;b=2">'
        '<script src="https://cdn.example.com/s.js">var a = "<a href=/no>";</script><td background="bg.png"></td>'  # noqa: E501  (prose or a URL: clearer whole)
    )
    assert tc.links(page) == [("a", "href", "/x"), ("img", "src", "https://cdn.example.com/i.png"),
                              ("a", "href", "https://a.example.com/?a=1&b=2"),
                              ("script", "src", "https://cdn.example.com/s.js"),
                              ("td", "background", "bg.png")]
    assert tc.bad_links(page) == [("a", "href", "/x"), ("td", "background", "bg.png")]


def test_a_bad_link_is_located_in_the_layout_it_came_from(tmp_path: Path) -> None:
    (tmp_path / "_layouts").mkdir()
    (tmp_path / "_layouts" / "base.j2").write_text(
        '<p>\n<a href="{{ links.home }}">home</a>\n<a href="https://ok.example.com/">ok</a></p>\n'
        "{% block content %}{% endblock %}")
    (tmp_path / "t" / "en").mkdir(parents=True)
    (tmp_path / "t" / "en" / "body.html.j2").write_text(
        '{% extends "_layouts/base.j2" %}\n{% block content %}<img src="logo.png">{% endblock %}')
    store = TemplateStore(tmp_path)
    ctx = {"links": {"home": "home.html"}}
    html = store.render_part("t", "en", "body.html.j2", ctx)
    assert tc.bad_links(html) == [("a", "href", "home.html"), ("img", "src", "logo.png")]
    assert tc.locate_link(store, "t/en/body.html.j2", "href", "home.html", ctx) == \
        (str(tmp_path / "_layouts" / "base.j2"), 2, 4)
    assert tc.locate_link(store, "t/en/body.html.j2", "src", "logo.png", ctx) == \
        (str(tmp_path / "t" / "en" / "body.html.j2"), 2, 25)
