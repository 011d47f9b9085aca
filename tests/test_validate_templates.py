"""``clm validate`` on a copy of the shipped project: clean as shipped, and each mistake a
marketer makes in a template, a journey or the configuration fails it with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from clm import cli
from tests.email_fixtures import add_customers, sample_project

THANKS_HTML = "templates/welcome_thanks/en/body.html.j2"
BUTTON = '<p><a class="button" href="{{ links.shop }}">Visit the shop</a></p>'

# name -> (file to change, text, replacement, file:line[:column] expected, part of the message)
MUTATIONS = {
    "single braces": (
        THANKS_HTML,
        "{{ links.shop }}",
        "{ links.shop }",
        f"{THANKS_HTML}:6:28",
        "single braces are not a placeholder: '{ links.shop }'",
    ),
    "unclosed placeholder": (
        THANKS_HTML,
        "{{ links.shop }}",
        "{{ links.shop }",
        f"{THANKS_HTML}:6:28",
        "opened with {{ but closed with }",
    ),
    "placeholder closed twice": (
        THANKS_HTML,
        "{{ links.shop }}",
        "{ links.shop }}",
        f"{THANKS_HTML}:6:28",
        "opened with { but closed with }}",
    ),
    "dollar placeholder": (
        "templates/welcome_thanks/en/subject.txt.j2",
        "{{ customer.first_name }}",
        "${customer.first_name}",
        "templates/welcome_thanks/en/subject.txt.j2:1:33",
        "${...} is not a placeholder here",
    ),
    "dollar in an SMS": (
        "templates/winback_sms/zh-CN/sms.txt.j2",
        "{{ coupon.code }}",
        "${ coupon.code }",
        "templates/winback_sms/zh-CN/sms.txt.j2:1:",
        "write {{ coupon.code }}",
    ),
    "relative link": (
        THANKS_HTML,
        "{{ links.shop }}",
        "/shop",
        f"{THANKS_HTML}:6:22",
        "<a href='/shop'> in 'welcome_thanks' (en) is not an absolute http(s)",
    ),
    "image without host": (
        THANKS_HTML,
        BUTTON,
        BUTTON + '\n<img src="logo.png" alt="">',
        f"{THANKS_HTML}:7:6",
        "<img src='logo.png'>",
    ),
    "text outside the blocks": (
        THANKS_HTML,
        "{% endblock %}",
        "{% endblock %}\nSee you soon!",
        f"{THANKS_HTML}:8:",
        "'See you soon!' is outside every block",
    ),
    "SMS without opt-out": (
        "templates/winback_sms/en/sms.txt.j2",
        " Reply STOP to opt out",
        "",
        "journeys/winback.yaml:30:7",
        "marketing SMS 'winback_sms' (en) has no opt-out line",
    ),
    "email without unsubscribe link": (
        "templates/_layouts/email.html.j2",
        '<a href="{{ links.unsubscribe }}">Unsubscribe</a>',
        "Unsubscribe",
        "journeys/welcome.yaml:21:28",
        "marketing email 'welcome_thanks' (en) has no unsubscribe link in its HTML",
    ),
    "text part without unsubscribe link": (
        "templates/welcome_thanks/en/body.txt.j2",
        "Unsubscribe: {{ links.unsubscribe }}",
        "",
        "journeys/welcome.yaml:21:28",
        "marketing email 'welcome_thanks' (en) has no unsubscribe link in its text part",
    ),
    "unknown stage": (
        "journeys/welcome.yaml",
        "stage: {to: new}",
        "stage: {to: nwe}",
        "journeys/welcome.yaml:9:11",
        "unknown stage 'nwe' (did you mean 'new'?)",
    ),
    "unclosed bracket": (
        "journeys/welcome.yaml",
        "stage: {to: new}",
        "stage: {to: new",
        "journeys/welcome.yaml:10:9",
        ("while parsing a flow mapping that started at line 9, column 10 (is its '}' missing?)"),
    ),
    "relative shop URL": (
        "clm.toml",
        'store_url = "https://shop.example.org/"',
        'store_url = "shop.example.org"',
        "clm.toml:6",
        "store_url 'shop.example.org' is not an absolute http(s) URL",
    ),
}


def validate(root: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--project", str(root), "validate", *args])


def test_the_shipped_project_is_clean(tmp_path: Path) -> None:
    result = validate(sample_project(tmp_path / "shop"))
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == "0 error(s), 0 warning(s)", result.output


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_mistake_fails_validate_with_file_and_line(tmp_path: Path, name: str) -> None:
    rel, old, new, where, message = MUTATIONS[name]
    root = sample_project(tmp_path / "shop")
    path = root / rel
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{rel} no longer contains {old!r}: update the mutation"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    result = validate(root)
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    errors = [x for x in result.output.splitlines() if ": error: " in x]
    assert any(x.startswith(f"{root / where}") and message in x for x in errors), result.output


def test_validate_one_journey_checks_its_templates(tmp_path: Path) -> None:
    root = sample_project(tmp_path / "shop")
    page = root / THANKS_HTML
    page.write_text(page.read_text(encoding="utf-8").replace("{{ links.shop }}", "{ links.shop }"))
    assert validate(root, str(root / "journeys" / "welcome.yaml")).exit_code == 1
    assert validate(root, str(root / "journeys" / "winback.yaml")).exit_code == 0


def test_a_locale_with_customers_but_no_variant_is_a_warning_with_the_count(
        tmp_path: Path, db_url: str, engine: sa.Engine) -> None:
    root = sample_project(tmp_path / "shop", database_url=db_url)
    add_customers(engine, [(f"fr-{i}", "Camille", "fr") for i in range(3)]
                  + [("en-1", "Alex", "en"), ("none-1", "Sam", None)])
    result = validate(root)
    assert result.exit_code == 0, result.output  # a warning, unless --strict
    warnings = [x for x in result.output.splitlines() if ": warning: " in x]
    assert f"{root}/journeys/welcome.yaml:21:28: warning: template 'welcome_thanks' has no fr " \
           "variant: 3 customer(s) with locale fr would get the en one" in warnings, result.output
    assert not any("locale en " in x or "locale zh-CN" in x for x in warnings), result.output
    assert validate(root, "--strict").exit_code == 1


def test_an_incomplete_locale_variant_is_an_error(tmp_path: Path) -> None:
    root = sample_project(tmp_path / "shop")
    fr = root / "templates" / "welcome_thanks" / "fr"
    fr.mkdir()
    (fr / "subject.txt.j2").write_text("Merci, {{ customer.first_name }} !")
    result = validate(root)
    assert result.exit_code == 1, result.output
    assert f"{root}/journeys/welcome.yaml:21:28: error: template 'welcome_thanks' (fr) has no " \
           "body.html.j2, body.txt.j2, so fr customers get the en variant" in result.output
