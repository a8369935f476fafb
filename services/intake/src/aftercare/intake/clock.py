"""The one place intake reads the clock; the domain gets ``now`` from the use case."""

from __future__ import annotations

from datetime import UTC, datetime

from aftercare.intake.domain.changes import as_stored


def now() -> datetime:
    """Now, as the store keeps times (UTC, milliseconds)."""
    return as_stored(datetime.now(UTC))
