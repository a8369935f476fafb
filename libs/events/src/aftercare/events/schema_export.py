"""Export the JSON Schema of every event (envelope included) to committed files.

    python -m aftercare.events.schema_export [DIR]

The files are the contract for anyone outside Python; a test fails when code and files differ.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from aftercare.events.catalog import EVENT_MODELS
from aftercare.events.envelope import Envelope

SCHEMA_DIR = Path(__file__).resolve().parents[3] / "schemas"


def event_schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema, one per event type and version."""
    schemas: dict[str, dict[str, Any]] = {}
    for model in EVENT_MODELS:
        schema = Envelope[model].model_json_schema()  # type: ignore[valid-type]
        schema["title"] = f"{model.TYPE} v{model.VERSION}"
        schema["$id"] = f"https://aftercare.dev/schemas/events/{model.TYPE}.v{model.VERSION}.json"
        schemas[f"{model.TYPE}.v{model.VERSION}.json"] = schema
    return schemas


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def export(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in event_schemas().items():
        path = directory / name
        path.write_text(render(schema))
        written.append(path)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else SCHEMA_DIR
    for path in export(target):
        print(path)
