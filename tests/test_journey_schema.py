"""The checked-in JSON Schema is generated from the validator's models and accepts the samples."""

from __future__ import annotations

import json

import jsonschema
import pytest

from clm_core.journeys.schema import SCHEMA_FILE, schema_text
from clm_core.yamlspec import load_yaml
from tests.conftest import REPO
from tests.test_journey_cli import SAMPLES
from tests.test_journey_validate import CORPUS

SCHEMA_PATH = REPO / "journeys" / SCHEMA_FILE


def test_checked_in_schema_is_current() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == schema_text(), \
        "journeys/journey.schema.json is stale: run python -m clm_core.journeys.schema"


@pytest.mark.parametrize("name", SAMPLES)
def test_samples_match_the_schema(name: str) -> None:
    data, _ = load_yaml(REPO / "journeys" / f"{name}.yaml")
    jsonschema.validate(data, json.loads(SCHEMA_PATH.read_text()))


@pytest.mark.parametrize(
    "name",
    [
        "misspelled_top_key.yaml",
        "wrong_type.yaml",
        "bad_duration.yaml",
        "unknown_channel.yaml",
        "bad_weekday.yaml",
        "bad_time_of_day.yaml",
    ],
)
def test_editors_flag_what_the_validator_rejects(name: str) -> None:
    data, _ = load_yaml(CORPUS / "journeys" / name)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, json.loads(SCHEMA_PATH.read_text()))


def test_loyalty_schema_is_current_and_accepts_the_sample() -> None:
    from clm_core.loyalty.spec import SCHEMA_FILE as LOYALTY_SCHEMA
    from clm_core.loyalty.spec import schema_text as loyalty_schema_text

    path = REPO / "journeys" / LOYALTY_SCHEMA
    assert path.read_text(encoding="utf-8") == loyalty_schema_text(), \
        "journeys/loyalty.schema.json is stale: regenerate it from clm_core.loyalty.spec"
    data, _ = load_yaml(REPO / "journeys" / "loyalty.yaml")
    jsonschema.validate(data, json.loads(path.read_text()))
    data["earning"]["roundng"] = "up"  # what the validator rejects, editors flag too
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, json.loads(path.read_text()))
