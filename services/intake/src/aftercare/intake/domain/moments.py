"""Times a sender gives us, as the store can keep them.

The store keeps UTC milliseconds. ``0001-01-01T00:00:00+14:00`` and ``9999-12-31T23:59:59-14:00``
are valid ISO 8601 with an offset, but fall outside the calendar once moved to UTC (Python's
``datetime`` raises ``OverflowError``): such a time is the sender's mistake, answered as one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator

OUT_OF_RANGE = "must lie between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z once converted to UTC"


def in_utc(moment: datetime) -> datetime:
    """``moment`` in UTC (a time without offset is taken as UTC); ValueError if UTC cannot hold it."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{moment.isoformat()} {OUT_OF_RANGE}") from None


# For request models: an out-of-range time is a validation error (422) naming the field.
UtcDatetime = Annotated[datetime, AfterValidator(in_utc)]
