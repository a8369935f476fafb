"""The runs' outbox relay: a run's write knows exactly which outbox entries it added, so they are
published and pulled without reading the run back first (one store round trip per flush, not two).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from aftercare.events.envelope import Envelope
from aftercare.events.outbox import OutboxRelay


class RunOutboxRelay(OutboxRelay):
    async def flush_entries(
        self, collection: AsyncCollection[dict[str, Any]], document_id: Any, entries: Sequence[dict[str, Any]]
    ) -> list[Envelope[Any]]:
        """Publish ``entries`` (exactly as this process stored them in the document's outbox, in
        order) and pull them out. Entries left there by others (a crashed instance, a failed
        flush) are not looked at: a caller that may find such entries uses ``flush``."""
        if not entries:
            return []
        try:
            return await self._publish(collection, document_id, entries)
        except Exception:
            # As flush: left pending, the next sweep pass looks at this document first.
            self._remembered.setdefault(collection.full_name, set()).add(document_id)
            raise
