"""Frozen sample events: every event type and version that ever went on Kafka stays readable.

``tests/unit/event_samples/<type>.v<version>.json`` holds one complete envelope per event type
and version, written once when that version was introduced and never edited afterwards (it
stands for the events of that version already on Kafka). These tests parse each one with the
current code, upcasting old versions, and check that no field of a current-version sample was
removed or renamed without a version bump. The rule they enforce is in libs/events/README.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from aftercare.events.catalog import EVENT_MODELS, EVENT_TYPES, parse_envelope
from aftercare.events.envelope import Envelope, Event

SAMPLES = Path(__file__).with_name("event_samples")
SAMPLE_FILES = sorted(SAMPLES.glob("*.json"))


def sample_path(model: type[Event], version: int | None = None) -> Path:
    return SAMPLES / f"{model.TYPE}.v{version or model.VERSION}.json"


def how_to_add(model: type[Event]) -> str:
    required = [name for name, field in model.model_fields.items() if field.is_required()]
    relative = sample_path(model).relative_to(Path(__file__).parents[2])
    return (
        f"no frozen sample for {model.TYPE} v{model.VERSION} ({model.__module__}.{model.__name__}): "
        f"add {relative}, a complete envelope exactly as it goes on Kafka with every optional field "
        f"filled with a realistic value (its data needs at least: {', '.join(required) or 'nothing'}). "
        "Make it with: json.dumps(json.loads(aftercare.events.catalog.serialize(envelope_for("
        f"{model.__name__}(...), source=..., tenant_id=..., incident_id=...))), indent=2); "
        "see incident.acknowledged.v1.json next to it for the shape. Commit it and never edit it again."
    )


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def test_the_samples_folder_is_there() -> None:
    assert SAMPLE_FILES, f"no samples found under {SAMPLES}"


@pytest.mark.parametrize("model", EVENT_MODELS, ids=[model.TYPE for model in EVENT_MODELS])
def test_every_event_type_has_a_frozen_sample_of_its_current_version(model: type[Event]) -> None:
    assert sample_path(model).exists(), how_to_add(model)


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=[path.name for path in SAMPLE_FILES])
def test_each_sample_is_named_after_the_type_and_version_it_holds(path: Path) -> None:
    document = load(path)

    assert path.name == f"{document['type']}.v{document['version']}.json"
    assert document["type"] in EVENT_TYPES, (
        f"{path.name}: no event type {document['type']!r} any more; an event type is never removed "
        "while its events may still be on Kafka"
    )
    assert document["version"] <= EVENT_TYPES[document["type"]].VERSION, (
        f"{path.name} is newer than the model ({EVENT_TYPES[document['type']].__name__}.VERSION)"
    )


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=[path.name for path in SAMPLE_FILES])
def test_each_sample_still_parses_and_upcasts_to_the_current_version(path: Path) -> None:
    document = load(path)
    model = EVENT_TYPES[document["type"]]

    envelope = parse_envelope(path.read_bytes())

    assert isinstance(envelope.data, model)
    assert envelope.version == model.VERSION
    assert (envelope.id, envelope.tenant_id, envelope.incident_id) == (
        document["id"],
        document["tenant_id"],
        document["incident_id"],
    )


@pytest.mark.parametrize("model", EVENT_MODELS, ids=[model.TYPE for model in EVENT_MODELS])
def test_a_current_sample_has_no_field_its_model_lost(model: type[Event]) -> None:
    path = sample_path(model)
    if not path.exists():
        pytest.skip("no sample yet (see the test that asks for it)")
    document = load(path)

    # Strict, as when building: a field of the sample that the model no longer has was removed or
    # renamed, which readers of the old events would silently lose.
    try:
        Envelope[model].model_validate(document, extra="forbid")  # type: ignore[valid-type]
    except ValueError as error:
        pytest.fail(
            f"{path.name} no longer validates strictly against {model.__name__} v{model.VERSION}: {error}\n"
            "Removing, renaming or retyping a field is a breaking change: bump VERSION, add an upcaster "
            f"from v{model.VERSION} in aftercare/events/catalog.py, leave {path.name} as it is and add a "
            f"sample for the new version (an optional field with a default keeps the version)."
        )
