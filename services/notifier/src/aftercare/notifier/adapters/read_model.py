"""The dashboard's read model in the store: one document per incident with its timeline and the
fields folded from it (``domain/incident_view.py``). Optimistic: a write names the revision it
read, so two instances applying events of one incident never overwrite each other's entries."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from aftercare.events.envelope import Envelope
from aftercare.notifier.domain.incident_view import add_entry, entry_of, fold

Listener = Callable[[dict[str, Any]], Awaitable[None]]


class IncidentReadModel:
    def __init__(self, incidents: AsyncCollection[dict[str, Any]]) -> None:
        self._incidents = incidents
        self.listeners: list[Listener] = []

    async def apply(self, envelope: Envelope[Any], *, notify: bool = True) -> dict[str, Any] | None:
        """Add the event to its incident's timeline; returns the incident's view (None if the
        event concerns no incident). Idempotent: a redelivered event changes nothing."""
        incident_id = envelope.incident_id
        if incident_id is None:
            return None
        entry = entry_of(envelope)
        for _ in range(20):
            document = await self._incidents.find_one({"_id": incident_id})
            entries: list[dict[str, Any]] = (document or {}).get("entries", [])
            merged = add_entry(entries, entry)
            if merged is None:
                return _view(document)
            view = fold(incident_id, envelope.tenant_id, merged)
            revision = (document or {}).get("rev", 0)
            replacement = view | {"entries": merged, "rev": revision + 1}
            if document is None:
                try:
                    await self._incidents.insert_one({"_id": incident_id, **replacement})
                except DuplicateKeyError:
                    continue
            else:
                result = await self._incidents.replace_one({"_id": incident_id, "rev": revision}, replacement)
                if result.matched_count != 1:
                    continue
            for listener in self.listeners if notify else ():
                await listener(view)
            return view
        raise RuntimeError(f"incident {incident_id}: the read model kept changing under this write")

    async def get(self, incident_id: str) -> dict[str, Any] | None:
        return _view(await self._incidents.find_one({"_id": incident_id}))

    async def timeline(self, incident_id: str) -> list[dict[str, Any]]:
        document = await self._incidents.find_one({"_id": incident_id}, {"entries": 1})
        return list((document or {}).get("entries", []))

    async def list(self, tenants: list[str] | None, limit: int = 500) -> list[dict[str, Any]]:
        query: dict[str, Any] = {} if tenants is None else {"tenant_id": {"$in": tenants}}
        cursor = self._incidents.find(query, {"entries": 0}).sort("reported_at", -1).limit(limit)
        return [_view(document) or {} async for document in cursor]

    async def drop(self) -> None:
        await self._incidents.drop()

    async def replace_all(self, documents: Sequence[dict[str, Any]], chunk: int = 500) -> None:
        """Drop the read model and store ``documents`` instead (a rebuild)."""
        await self._incidents.drop()
        await self._incidents.create_index("tenant_id")
        for start in range(0, len(documents), chunk):
            await self._incidents.insert_many(list(documents[start : start + chunk]), ordered=False)


def _view(document: dict[str, Any] | None) -> dict[str, Any] | None:
    if document is None:
        return None
    return {key: value for key, value in document.items() if key not in ("_id", "entries", "rev")}
