"""Operators in intake's store, and the events that share them (outbox in the same write).

Collections (intake's own database):
* ``operators``: one document per operator (``_id`` the operator id) with its pending events in
  the outbox; a removed operator stays as ``removed: true`` (its revision and event time keep
  counting, so re-registering the same id later is ordered after the removal everywhere);
* ``operator_emails``: ``_id`` the sign-in email → operator id, so an email belongs to one
  operator only (the unique ``_id`` decides between two admins racing).

Every change is a compare-and-set on the operator's ``revision``: read, decide the whole new
operator (domain/operator.py), write it with its ``OperatorUpserted`` in the outbox only if the
revision is still the one read, else read again. Two admins changing one operator at once
(issuing two tokens, say) both land, and each event carries the whole operator as it was
after its own change.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from aftercare.events import outbox
from aftercare.events.envelope import Envelope, Event, envelope_for
from aftercare.events.operators import (
    OPERATOR_EVENTS_TENANT,
    Operator,
    OperatorRemoved,
    hash_password,
    new_operator_token,
    token_digest,
)
from aftercare.events.outbox import OutboxRelay
from aftercare.events.producer import EventProducer
from aftercare.intake.domain.operator import (
    MAX_TOKENS,
    IssuedToken,
    OperatorAccount,
    OperatorProfile,
    next_event_time,
    with_profile,
)

log = structlog.stdlib.get_logger("aftercare.intake.operators")

_CAS_ATTEMPTS = 50


class OperatorNotFound(LookupError):
    pass


class EmailTaken(ValueError):
    """Another operator signs in with this email already."""


class TooManyTokens(ValueError):
    pass


class OperatorStore:
    def __init__(self, database: AsyncDatabase[dict[str, Any]], producer: EventProducer) -> None:
        self.operators = database["operators"]
        self._emails = database["operator_emails"]
        self._relay = OutboxRelay(producer)

    async def ensure_indexes(self) -> None:
        await OutboxRelay.ensure_indexes(self.operators)

    async def sweep(self) -> int:
        """Publish operator events a crash left in the outbox (run as a single-instance job)."""
        return await self._relay.sweep(self.operators)

    # --- reads -----------------------------------------------------------------------------

    async def get(self, operator_id: str) -> OperatorAccount:
        document = await self.operators.find_one({"_id": operator_id}, {"outbox": 0})
        if document is None or document.get("removed"):
            raise OperatorNotFound(operator_id)
        return OperatorAccount.from_document(document)

    async def by_token(self, token: str) -> Operator | None:
        """The operator an API token belongs to; None if unknown, revoked or removed.

        Intake holds the operators themselves, so it checks their tokens against its own record
        (the other services keep a copy, ``aftercare.events.operators.OperatorDirectory``), and
        a revoked token is refused here at once. This reads every operator: they are the support
        company's people (tens), and only operator calls to intake ask.
        """
        digest = token_digest(token)
        for account in await self.all():
            if any(hmac.compare_digest(issued.digest, digest) for issued in account.tokens):
                return Operator(
                    operator_id=account.operator_id,
                    name=account.name,
                    email=account.email,
                    role=account.role,
                    tenants=None if account.all_tenants else frozenset(account.tenants),
                    active=account.active,
                )
        return None

    async def all(self) -> list[OperatorAccount]:
        cursor = self.operators.find({}, {"outbox": 0}).sort("_id")
        return [OperatorAccount.from_document(d) async for d in cursor if not d.get("removed")]

    # --- changes ---------------------------------------------------------------------------

    async def upsert(self, operator_id: str, profile: OperatorProfile) -> tuple[OperatorAccount, bool]:
        """Create or change an operator and announce it; returns (operator, created)."""
        # Argon2 is deliberately slow: keep it off the event loop.
        password_hash = await asyncio.to_thread(hash_password, profile.password) if profile.password else None
        await self._claim_email(profile.email, operator_id)
        created = False

        def change(current: OperatorAccount | None) -> OperatorAccount:
            nonlocal created
            created = current is None
            return with_profile(operator_id, current, profile, password_hash)

        before = await self._current(operator_id)
        account = await self._change(operator_id, change, create=True)
        if before is not None and before.email != account.email:
            await self._emails.delete_one({"_id": before.email, "operator_id": operator_id})
        return account, created

    async def issue_token(self, operator_id: str, name: str) -> tuple[str, str]:
        """A new API token for the operator: returns (token id, the token); only its digest is kept."""
        token = new_operator_token()
        digest = token_digest(token)
        issued = IssuedToken(token_id=digest[:12], name=name, digest=digest, created_at=_now())

        def change(current: OperatorAccount | None) -> OperatorAccount:
            assert current is not None
            if len(current.tokens) >= MAX_TOKENS:
                raise TooManyTokens(f"operator '{operator_id}' has {MAX_TOKENS} tokens; revoke one first")
            current.tokens.append(issued)
            return current

        await self._change(operator_id, change)
        return issued.token_id, token

    async def revoke_token(self, operator_id: str, token_id: str) -> bool:
        """Revoke one token at once (every service refuses it once the event reached it)."""
        found = False

        def change(current: OperatorAccount | None) -> OperatorAccount:
            nonlocal found
            assert current is not None
            kept = [token for token in current.tokens if token.token_id != token_id]
            found = len(kept) != len(current.tokens)
            current.tokens = kept
            return current

        await self._change(operator_id, change)
        return found

    async def remove(self, operator_id: str) -> bool:
        """Remove the operator and announce OperatorRemoved; False if there was none."""
        for _ in range(_CAS_ATTEMPTS):
            document = await self.operators.find_one({"_id": operator_id}, {"outbox": 0})
            if document is None or document.get("removed"):
                return False
            now = _now()
            at = next_event_time(_aware(document.get("event_time")), now)
            event = self._envelope(OperatorRemoved(operator_id=operator_id), at)
            update = outbox.add_to_update(
                {
                    "$set": {
                        "removed": True,
                        "tokens": [],
                        "password_hash": None,
                        "revision": document.get("revision", 0) + 1,
                        "event_time": at,
                        "updated_at": now,
                    }
                },
                event,
            )
            result = await self.operators.update_one(
                {"_id": operator_id, "revision": document.get("revision", 0)}, update
            )
            if result.matched_count == 1:
                await self._relay.flush(self.operators, operator_id)
                await self._emails.delete_one({"_id": document["email"], "operator_id": operator_id})
                return True
        raise RuntimeError(f"operator '{operator_id}' kept changing; try again")

    # --- internals -------------------------------------------------------------------------

    async def _current(self, operator_id: str) -> OperatorAccount | None:
        try:
            return await self.get(operator_id)
        except OperatorNotFound:
            return None

    async def _claim_email(self, email: str, operator_id: str) -> None:
        try:
            await self._emails.insert_one({"_id": email, "operator_id": operator_id})
        except DuplicateKeyError:
            holder = await self._emails.find_one({"_id": email})
            if holder is not None and holder["operator_id"] != operator_id:
                # The holder may have been removed meanwhile without releasing it (crash): check.
                if await self._current(holder["operator_id"]) is not None:
                    raise EmailTaken(f"operator '{holder['operator_id']}' signs in with {email} already") from None
                await self._emails.update_one(
                    {"_id": email, "operator_id": holder["operator_id"]}, {"$set": {"operator_id": operator_id}}
                )
                await self._claim_email(email, operator_id)

    async def _change(
        self,
        operator_id: str,
        change: Callable[[OperatorAccount | None], OperatorAccount],
        *,
        create: bool = False,
    ) -> OperatorAccount:
        for _ in range(_CAS_ATTEMPTS):
            document = await self.operators.find_one({"_id": operator_id}, {"outbox": 0})
            live = document is not None and not document.get("removed")
            if not live and not create:
                raise OperatorNotFound(operator_id)
            current = OperatorAccount.from_document(document) if live and document is not None else None
            account = change(current)
            revision = (document or {}).get("revision", 0)
            now = _now()
            at = next_event_time(_aware((document or {}).get("event_time")), now)
            event = self._envelope(account.announcement(), at)
            update = outbox.add_to_update(
                {
                    "$set": account.fields()
                    | {"removed": False, "revision": revision + 1, "event_time": at, "updated_at": now},
                    "$setOnInsert": {"created_at": now},
                },
                event,
            )
            expected: dict[str, Any] = {"$exists": False} if document is None else revision
            try:
                result = await self.operators.update_one(
                    {"_id": operator_id, "revision": expected}, update, upsert=document is None
                )
            except DuplicateKeyError:
                continue  # created by someone else meanwhile: read again
            if result.matched_count == 1 or result.upserted_id is not None:
                await self._relay.flush(self.operators, operator_id)
                return account
        raise RuntimeError(f"operator '{operator_id}' kept changing; try again")

    @staticmethod
    def _envelope(event: Event, at: datetime) -> Envelope[Any]:
        return envelope_for(event, source="intake", tenant_id=OPERATOR_EVENTS_TENANT, time=at)


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(moment: datetime | None) -> datetime | None:
    return moment.astimezone(UTC) if moment is not None else None
