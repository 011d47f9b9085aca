"""Broken journey files: each one fails ``clm validate`` with file:line:column and a message that
says what is wrong and what would be valid; none crashes."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from clm import cli

CORPUS = Path(__file__).parent / "journeys_broken"

# file -> (line, column, part of the message)
EXPECTED = {
    "yaml_syntax.yaml": (10, 7, ("YAML syntax: expected ',' or '}', but got ':'; while parsing a "
                                 "flow mapping that started at line 9, column 11 (is its '}' "
                                 "missing?)")),
    "misspelled_top_key.yaml": (7, 1, "unknown key 'stpes' (did you mean 'steps'?)"),
    "misspelled_step_key.yaml": (9, 5, "unknown key 'sned' (did you mean 'send'?)"),
    "wrong_type.yaml": (7, 1, "priority: Input should be a valid integer"),
    "bad_duration.yaml": (11, 5, "a duration is a positive whole number and a unit m, h, d or w"),
    "unknown_template.yaml": (9, 28, "no email template 'good_emial' (did you mean 'good_email'?)"),
    "undefined_template_variable.yaml": (9, 28, "bad_variable/en/body.html.j2:2: undefined"),
    "unknown_step_reference.yaml": (10, 5, "unknown step 'farewell' (did you mean 'fairwell'?)"),
    "cycle.yaml": (12, 5, "steps form a cycle: hello -> pause -> again -> hello"),
    "unknown_field.yaml": (7, 12, "unknown field 'p_alve' (did you mean 'p_alive'?)"),
    "unknown_operator.yaml": (7, 28, "unknown operator 'greater'"),
    "duplicate_step_id.yaml": (10, 5, "step id 'hello' is used twice"),
    "two_triggers.yaml": (3, 1, "entry needs exactly one trigger: stage, tier, segment or event"),
    "bad_time_of_day.yaml": (9, 12, 'a time of day is "HH:MM" on a 24-hour clock'),
    "bad_weekday.yaml": (9, 39, "Input should be 'mon', 'tue'"),
    "not_a_mapping.yaml": (1, 1, "a journey file is a mapping"),
    "empty.yaml": (1, 1, "a journey file is a mapping"),
    "not_utf8.yaml": (3, 18, "not UTF-8 text (byte 0xe9)"),
    "reentry_without_interval.yaml": (5, 3, "re-entry policy 'interval' needs 'every'"),
    "step_not_a_mapping.yaml": (8, 5, "a step is a mapping with an id"),
    "unknown_channel.yaml": (9, 12, "Input should be 'email' or 'sms' (got 'fax')"),
    "coupon_over_100_percent.yaml": (12, 7, "a percent coupon is at most 100"),
    "bad_step_id.yaml": (8, 5, "String should match pattern"),
    "two_actions.yaml": (10, 5, "a step does one thing; this one has send and wait"),
    "zero_weight.yaml": (10, 22, "weight: Input should be greater than 0"),
    "long_journey_name.yaml": (1, 1, "name: String should have at most 64 characters"),
    "long_step_id.yaml": (8, 5, "id: String should have at most 64 characters"),
}


def test_every_broken_file_is_in_the_table() -> None:
    assert {p.name for p in (CORPUS / "journeys").glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_broken_file_fails_with_location(name: str) -> None:
    line, column, message = EXPECTED[name]
    path = CORPUS / "journeys" / name
    result = CliRunner().invoke(cli, ["--project", str(CORPUS), "validate", str(path)])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    errors = [x for x in result.output.splitlines() if ": error: " in x]
    assert any(x.startswith(f"{path}:{line}:{column}: error: ") and message in x for x in errors), \
        result.output


def test_warnings_do_not_fail_unless_strict(tmp_path: Path) -> None:
    text = (CORPUS / "journeys" / "duplicate_step_id.yaml").read_text()
    ok = tmp_path / "lint.yaml"
    ok.write_text(text.replace("  - id: hello\n    exit: {}\n", "  - id: orphan\n    exit: {}\n")
                  .replace("template: good_email}", "template: good_email}\n    goto: done2\n"
                           "  - id: done2\n    exit: {}"))
    result = CliRunner().invoke(cli, ["--project", str(CORPUS), "validate", str(ok)])
    assert result.exit_code == 0, result.output
    assert f"{ok}:13:5: warning: step 'orphan' can never be reached" in result.output
    strict = CliRunner().invoke(cli, ["--project", str(CORPUS), "validate", "--strict", str(ok)])
    assert strict.exit_code == 1


def test_lints_coupon_expiry_sms_quiet_hours_and_reentry_gap(tmp_path: Path) -> None:
    journey = tmp_path / "lints.yaml"
    journey.write_text("""name: lints
status: active
entry:
  segment: {field: stage, eq: new}
  reentry: {policy: rematch, min_gap: 1d}
contact_policy:
  quiet_hours_window: {enabled: false}
steps:
  - id: offer
    send: {channel: email, template: good_email, coupon: {kind: percent, value: 10}}
  - id: pause
    wait: 3d
  - id: text
    send: {channel: sms, template: good_sms}
""")
    result = CliRunner().invoke(cli, ["--project", str(CORPUS), "validate", str(journey)])
    out = result.output
    assert result.exit_code == 0, out
    assert f"{journey}:10:50: warning: coupon without expiry" in out
    assert "'good_sms' (en) has no opt-out" not in out
    assert f"{journey}:14:5: warning: SMS without quiet hours" in out
    assert f"{journey}:12:5: warning: this wait is longer than the re-entry gap" in out
    assert f"{journey}:8:1: warning: the journey has neither goals nor an exit step" in out


def test_two_files_with_one_name(tmp_path: Path) -> None:
    text = (
        (CORPUS / "journeys" / "unknown_template.yaml")
        .read_text()
        .replace("good_emial", "good_email")
    )
    (tmp_path / "a.yaml").write_text(text)
    (tmp_path / "b.yaml").write_text(text)
    result = CliRunner().invoke(cli, ["--project", str(CORPUS), "validate", str(tmp_path)])
    assert result.exit_code == 1
    assert (
        f"{tmp_path / 'b.yaml'}:1:1: error: journey name 'broken' is already used by"
        in result.output
    )


def test_stage_rules_are_validated_too(tmp_path: Path) -> None:
    from tests.conftest import REPO

    rules = tmp_path / "lifecycle.yaml"
    rules.write_text((REPO / "journeys" / "lifecycle.yaml").read_text().replace(
        "{field: p_alive, lt: 0.3}", "{field: p_alve, lt: 0.3}"))
    result = CliRunner().invoke(cli, ["--project", str(CORPUS), "validate", str(tmp_path)])
    assert result.exit_code == 1
    assert (
        f"{rules}:" in result.output
        and "unknown field 'p_alve' (did you mean 'p_alive'?)" in result.output
    )
