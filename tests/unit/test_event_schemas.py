"""The committed JSON Schemas in libs/events/schemas/ are the contract for anyone outside Python;
they must be exactly what the models produce, with no leftovers from removed types."""

from __future__ import annotations

import json

from aftercare.events import schema_export

FIX = "run `uv run python -m aftercare.events.schema_export` and commit libs/events/schemas/"


def test_every_event_schema_is_committed_and_up_to_date() -> None:
    expected = schema_export.event_schemas()
    problems: list[str] = []
    for name, schema in sorted(expected.items()):
        path = schema_export.SCHEMA_DIR / name
        if not path.exists():
            problems.append(f"missing: {name}")
        elif path.read_text() != schema_export.render(schema):
            problems.append(f"out of date: {name}")

    assert not problems, f"event schemas differ from the code ({'; '.join(problems)}); {FIX}"


def test_no_stale_schema_files_are_left() -> None:
    expected = set(schema_export.event_schemas())
    committed = {path.name for path in schema_export.SCHEMA_DIR.iterdir() if path.is_file()}

    stale = sorted(committed - expected)
    assert not stale, (
        f"schema files with no event model behind them: {', '.join(stale)}; delete them "
        f"(an old version's schema stays only while its model does), then {FIX}"
    )


def test_each_schema_names_its_type_and_version() -> None:
    for name, schema in schema_export.event_schemas().items():
        event_type, version = name.removesuffix(".json").rsplit(".v", 1)
        assert schema["title"] == f"{event_type} v{version}"
        assert schema["properties"]["type"]["type"] == "string"
        assert json.loads(schema_export.render(schema)) == schema
