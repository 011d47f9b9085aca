"""The editors' JSON Schema of journey files, generated from the validator's own models.

    python -m clm_core.journeys.schema [PATH]     (default: journeys/journey.schema.json)

VS Code's YAML extension picks it up from the ``# yaml-language-server: $schema=...`` line at the
top of each journey file (or a ``yaml.schemas`` setting).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from clm_core.journeys.model import Journey

SCHEMA_FILE = "journey.schema.json"


def journey_schema() -> dict[str, Any]:
    schema = Journey.model_json_schema(by_alias=True, mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://clm.example.com/schemas/journey.schema.json", **schema}


def schema_text() -> str:
    return json.dumps(journey_schema(), indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else Path("journeys") / SCHEMA_FILE
    path.write_text(schema_text(), encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
