"""Fast tests of use cases: an in-memory event bus and in-memory store collections.

The integration tests on the real broker and store are the proof that a service keeps its
promises; these are for working on rules, so a rule change is tested in milliseconds::

    database = MemoryDatabase()
    bus = MemoryBus(consumer.handlers(IncidentStore(database, bus)), group_id="intake")
    await report(store, "acme", some_report)          # the use case publishes through ``bus``
    assert bus.published_types() == ["incident.reported"]
    await bus.deliver(triaged_envelope)                 # runs intake's handlers, once per event

:class:`MemoryBus` stands in for the producer (``publish``/``publish_many``, recording what was
published) and for the consumer runner: :meth:`MemoryBus.deliver` puts the envelope through the
real wire format (``serialize`` then ``parse_envelope``, so upcasting and validation are the
real ones) and runs each handler registered for its type, skipping a (handler, event) pair
already processed, exactly as the runner's processed-event log does.

:class:`MemoryDatabase` hands out :class:`MemoryCollection` objects with the subset of PyMongo's
async collection API the services use (the subset FerretDB supports, see INFRA.md): filters with
``$in $nin $ne $lt $lte $gt $gte $size $exists``; updates with ``$set $setOnInsert $unset $inc
$max $min $push $addToSet $pullAll $pull``; unique indexes raising PyMongo's
``DuplicateKeyError``. It does not model concurrency or a real store's faults: test those on
the real store.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from aftercare.events.catalog import EventRejected, parse_envelope, serialize
from aftercare.events.consumer import HandlerTable, handler_name
from aftercare.events.envelope import Envelope

__all__ = ["MemoryBus", "MemoryCollection", "MemoryDatabase"]


# --- the bus -------------------------------------------------------------------------------


class MemoryBus:
    """A producer and a consumer group in one, in memory; handlers run when you call ``deliver``."""

    def __init__(self, handlers: HandlerTable | None = None, *, group_id: str = "test") -> None:
        self.group_id = group_id
        self.published: list[Envelope[Any]] = []
        self.dead_letters: list[tuple[bytes, str]] = []
        self._handlers: dict[str, list[Any]] = {}
        self._processed: set[tuple[str, str]] = set()
        self._delivered = 0
        if handlers is not None:
            self.subscribe(handlers)

    def subscribe(self, handlers: HandlerTable) -> None:
        """Add a handler table (a service's ``handlers(...)``)."""
        for model, funcs in handlers.items():
            self._handlers.setdefault(model.TYPE, []).extend(funcs)

    # The producer's side (duck-typed like ``EventProducer``).

    async def start(self) -> None:
        """Nothing to connect."""

    async def stop(self) -> None:
        """Nothing to close."""

    async def publish(self, envelope: Envelope[Any], topic: str | None = None) -> Envelope[Any]:
        """Record ``envelope`` as published (after a round trip through the wire format)."""
        self.published.append(parse_envelope(serialize(envelope)))
        return envelope

    async def publish_many(self, envelopes: Iterable[Envelope[Any]], topic: str | None = None) -> list[Envelope[Any]]:
        """Record each envelope as published, in order."""
        return [await self.publish(envelope, topic) for envelope in envelopes]

    async def publish_serialized(self, records: Sequence[tuple[str, bytes, Envelope[Any]]]) -> None:
        """Record events already serialised (what an outbox or a group commit stored), in order."""
        for _, value, _ in records:
            self.published.append(parse_envelope(value))

    def published_types(self) -> list[str]:
        """The types of everything published so far, in order."""
        return [envelope.type for envelope in self.published]

    # The consumer's side.

    async def deliver(self, envelope: Envelope[Any] | bytes) -> int:
        """Run the handlers of one event as the consumer runner would; returns how many ran.

        A handler that already processed this event id is skipped (a redelivery). An event
        that does not parse is recorded in ``dead_letters`` with the reason, as the runner
        would dead-letter it. A handler's exception propagates (the runner would retry).
        """
        raw = envelope if isinstance(envelope, bytes) else serialize(envelope)
        try:
            parsed = parse_envelope(raw)
        except EventRejected as rejected:
            self.dead_letters.append((raw, str(rejected)))
            return 0
        ran = 0
        for handler in self._handlers.get(parsed.type, []):
            key = (handler_name(handler), parsed.id)
            if key in self._processed:
                continue
            await handler(parsed)
            self._processed.add(key)
            ran += 1
        return ran

    async def drain(self, max_rounds: int = 100) -> int:
        """Deliver everything published since the last drain to the subscribed handlers (and what
        those publish in turn); returns the number of events delivered."""
        delivered = 0
        for _ in range(max_rounds):
            pending = self.published[self._delivered :]
            if not pending:
                return delivered
            self._delivered = len(self.published)
            for envelope in pending:
                await self.deliver(envelope)
                delivered += 1
        raise RuntimeError(f"events still being published after {max_rounds} rounds: a loop between handlers?")


# --- the store -----------------------------------------------------------------------------


@dataclass
class _Result:
    matched_count: int = 0
    modified_count: int = 0
    upserted_id: Any = None
    inserted_id: Any = None
    deleted_count: int = 0


_MISSING = object()


def _get(document: Mapping[str, Any], path: str) -> Any:
    value: Any = document
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        else:
            return _MISSING
    return value


def _set(document: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    for part in parts[:-1]:
        document = document.setdefault(part, {})
    document[parts[-1]] = value


def _unset(document: dict[str, Any], path: str) -> None:
    parts = path.split(".")
    for part in parts[:-1]:
        document = document.get(part, {})
    document.pop(parts[-1], None)


def _equal(value: Any, wanted: Any) -> bool:
    if isinstance(value, list) and not isinstance(wanted, list):
        return wanted in value
    return bool(value == wanted)


def _compare(value: Any, operator: str, operand: Any) -> bool:
    present = value is not _MISSING
    if operator == "$exists":
        return present == bool(operand)
    if operator == "$eq":
        return present and _equal(value, operand)
    if operator == "$ne":
        return not (present and _equal(value, operand))
    if operator == "$in":
        return present and any(_equal(value, option) for option in operand)
    if operator == "$nin":
        return not (present and any(_equal(value, option) for option in operand))
    if operator == "$size":
        return isinstance(value, list) and len(value) == operand
    if not present or value is None:
        return False
    if operator == "$lt":
        return bool(value < operand)
    if operator == "$lte":
        return bool(value <= operand)
    if operator == "$gt":
        return bool(value > operand)
    if operator == "$gte":
        return bool(value >= operand)
    raise NotImplementedError(f"filter operator {operator} (not used by the services)")


def _matches(document: Mapping[str, Any], query: Mapping[str, Any]) -> bool:
    for path, condition in query.items():
        value = _get(document, path)
        if isinstance(condition, Mapping) and condition and all(key.startswith("$") for key in condition):
            if not all(_compare(value, operator, operand) for operator, operand in condition.items()):
                return False
        elif value is _MISSING or not _equal(value, condition):
            if not (value is _MISSING and condition is None):
                return False
    return True


def _project(document: dict[str, Any], projection: Mapping[str, Any] | None) -> dict[str, Any]:
    document = copy.deepcopy(document)
    if not projection:
        return document
    included = {key for key, flag in projection.items() if flag and key != "_id"}
    if included:
        kept = {key: document[key] for key in included if key in document}
        if projection.get("_id", 1):
            kept["_id"] = document["_id"]
        return kept
    for key, flag in projection.items():
        if not flag:
            document.pop(key, None)
    return document


def _apply_update(document: dict[str, Any], update: Mapping[str, Any], *, inserting: bool) -> None:
    for operator, fields in update.items():
        for path, operand in fields.items():
            current = _get(document, path)
            if operator == "$set":
                _set(document, path, copy.deepcopy(operand))
            elif operator == "$setOnInsert":
                if inserting:
                    _set(document, path, copy.deepcopy(operand))
            elif operator == "$unset":
                _unset(document, path)
            elif operator == "$inc":
                _set(document, path, (0 if current is _MISSING else current) + operand)
            elif operator == "$max":
                if current is _MISSING or operand > current:
                    _set(document, path, operand)
            elif operator == "$min":
                if current is _MISSING or operand < current:
                    _set(document, path, operand)
            elif operator in ("$push", "$addToSet"):
                items = operand["$each"] if isinstance(operand, Mapping) and "$each" in operand else [operand]
                target = [] if current is _MISSING else list(current)
                for item in items:
                    if operator == "$push" or item not in target:
                        target.append(copy.deepcopy(item))
                _set(document, path, target)
            elif operator in ("$pullAll", "$pull"):
                removed = operand if operator == "$pullAll" else [operand]
                if current is not _MISSING:
                    _set(document, path, [item for item in current if item not in removed])
            else:
                raise NotImplementedError(f"update operator {operator} (not used by the services)")


class _Cursor:
    def __init__(self, documents: list[dict[str, Any]]) -> None:
        self._documents = documents

    def sort(self, keys: str | Sequence[tuple[str, int]], direction: int = 1) -> _Cursor:
        order = [(keys, direction)] if isinstance(keys, str) else list(keys)
        for key, way in reversed(order):
            self._documents.sort(key=lambda d: (_get(d, key) is _MISSING, _get(d, key)), reverse=way < 0)
        return self

    def skip(self, count: int) -> _Cursor:
        self._documents = self._documents[count:]
        return self

    def limit(self, count: int) -> _Cursor:
        if count:
            self._documents = self._documents[:count]
        return self

    async def to_list(self, length: int | None = None) -> list[dict[str, Any]]:
        return self._documents[:length] if length else list(self._documents)

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[dict[str, Any]]:
        for document in self._documents:
            yield document


@dataclass
class MemoryCollection:
    """An in-memory collection with the async PyMongo methods the services use."""

    name: str
    database: MemoryDatabase
    documents: dict[Any, dict[str, Any]] = field(default_factory=dict)
    unique: list[tuple[str, ...]] = field(default_factory=list)

    @property
    def full_name(self) -> str:
        """``database.collection``, as PyMongo names it (the outbox relay keys on it)."""
        return f"{self.database.name}.{self.name}"

    async def create_index(self, keys: Any, *, unique: bool = False, **_: Any) -> str:
        fields = (keys,) if isinstance(keys, str) else tuple(key for key, _ in keys)
        if unique:
            self.unique.append(fields)
        return "_".join(fields)

    def _check_unique(self, document: dict[str, Any], ignore: Any = _MISSING) -> None:
        for fields in [("_id",), *self.unique]:
            wanted = tuple(_get(document, key) for key in fields)
            for other_id, other in self.documents.items():
                if other_id != ignore and tuple(_get(other, key) for key in fields) == wanted:
                    raise DuplicateKeyError(f"E11000 duplicate key error collection: {self.name} index: {fields}")

    def _find(self, query: Mapping[str, Any]) -> list[dict[str, Any]]:
        if set(query) == {"_id"} and not isinstance(query["_id"], Mapping):
            found = self.documents.get(query["_id"])
            return [found] if found is not None else []
        return [document for document in self.documents.values() if _matches(document, query)]

    async def insert_one(self, document: dict[str, Any]) -> _Result:
        stored = copy.deepcopy(document)
        self._check_unique(stored)
        self.documents[stored["_id"]] = stored
        return _Result(inserted_id=stored["_id"])

    async def insert_many(self, documents: Iterable[dict[str, Any]], ordered: bool = True) -> _Result:
        for document in documents:
            await self.insert_one(document)
        return _Result()

    async def find_one(self, query: Mapping[str, Any] | None = None, projection: Any = None) -> dict[str, Any] | None:
        found = self._find(query or {})
        return _project(found[0], projection) if found else None

    def find(self, query: Mapping[str, Any] | None = None, projection: Any = None) -> _Cursor:
        return _Cursor([_project(document, projection) for document in self._find(query or {})])

    async def count_documents(self, query: Mapping[str, Any]) -> int:
        return len(self._find(query))

    async def _update(
        self, query: Mapping[str, Any], update: Mapping[str, Any], *, upsert: bool, many: bool
    ) -> tuple[_Result, list[Any]]:
        found = self._find(query)
        if not found and upsert:
            document = {key: value for key, value in query.items() if not isinstance(value, Mapping)}
            _apply_update(document, update, inserting=True)
            await self.insert_one(document)
            return _Result(upserted_id=document["_id"]), [document["_id"]]
        targets = found if many else found[:1]
        for document in targets:
            changed = copy.deepcopy(document)
            _apply_update(changed, update, inserting=False)
            self._check_unique(changed, ignore=document["_id"])
            self.documents[document["_id"]] = changed
        return _Result(matched_count=len(targets), modified_count=len(targets)), [d["_id"] for d in targets]

    async def update_one(self, query: Mapping[str, Any], update: Mapping[str, Any], upsert: bool = False) -> _Result:
        return (await self._update(query, update, upsert=upsert, many=False))[0]

    async def update_many(self, query: Mapping[str, Any], update: Mapping[str, Any], upsert: bool = False) -> _Result:
        return (await self._update(query, update, upsert=upsert, many=True))[0]

    async def find_one_and_update(
        self,
        query: Mapping[str, Any],
        update: Mapping[str, Any],
        projection: Any = None,
        *,
        upsert: bool = False,
        return_document: bool = ReturnDocument.BEFORE,
    ) -> dict[str, Any] | None:
        before = await self.find_one(query)
        _, ids = await self._update(query, update, upsert=upsert, many=False)
        if return_document == ReturnDocument.AFTER:
            return _project(self.documents[ids[0]], projection) if ids else None
        return _project(before, projection) if before else None

    async def replace_one(self, query: Mapping[str, Any], document: dict[str, Any], upsert: bool = False) -> _Result:
        found = self._find(query)
        if not found:
            if upsert:
                await self.insert_one(document)
            return _Result()
        replacement = copy.deepcopy(document) | {"_id": found[0]["_id"]}
        self._check_unique(replacement, ignore=found[0]["_id"])
        self.documents[found[0]["_id"]] = replacement
        return _Result(matched_count=1, modified_count=1)

    async def delete_one(self, query: Mapping[str, Any]) -> _Result:
        found = self._find(query)
        if found:
            del self.documents[found[0]["_id"]]
        return _Result(deleted_count=len(found[:1]))

    async def delete_many(self, query: Mapping[str, Any]) -> _Result:
        found = self._find(query)
        for document in found:
            del self.documents[document["_id"]]
        return _Result(deleted_count=len(found))


class MemoryDatabase:
    """``database["name"]`` gives the same in-memory collection every time."""

    def __init__(self, name: str = "test") -> None:
        self.name = name
        self._collections: dict[str, MemoryCollection] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._collections:
            self._collections[name] = MemoryCollection(name, self)
        return self._collections[name]

    def get_collection(self, name: str) -> Any:
        return self[name]
