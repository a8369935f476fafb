"""Tenants and their channel credentials, and the TenantUpserted events that share them.

Collections (intake's own database):
* ``tenants``: the profile, with the pending TenantUpserted in its outbox;
* ``credentials``: one document per secret or address a channel presents, ``_id`` is
  ``<kind>|<digest or address>`` so a lookup is one read by ``_id`` and a secret can belong to
  one tenant only.

Lookups are cached in this process (``CredentialCache``, keyed by that ``_id``: secrets only
as their digest), because every request of every channel makes one. A cached credential is
forgotten when its tenant changes: at once in the instance that made the change, and in every
other instance when the tenant's ``TenantUpserted`` arrives on the tenants topic
(``adapters/tenant_changes.py``); every change of a tenant or its credentials announces the
tenant again. ``CACHE_SECONDS`` bounds how long an entry can outlive a change whose event is
late (the tenants topic unreachable).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import Counter
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from aftercare.events import outbox
from aftercare.events.envelope import envelope_for
from aftercare.events.outbox import OutboxRelay
from aftercare.events.producer import EventProducer
from aftercare.events.tenants import TenantUpserted
from aftercare.intake.domain.tenant import (
    InboundEmails,
    PhoneLine,
    Tenant,
    TenantProfile,
    digest,
    new_api_key,
    new_bearer_token,
    new_portal_slug,
    new_routing_key,
)

log = structlog.stdlib.get_logger("aftercare.intake.tenants")

API_KEY = "api-key"
PAGERDUTY = "pagerduty"
ALERTMANAGER = "alertmanager"
EMAIL = "email"
PHONE = "phone"
PORTAL = "portal"


class TenantNotFound(LookupError):
    pass


class CredentialTaken(ValueError):
    """The secret or address is registered to another tenant already."""


@dataclass(frozen=True)
class Credential:
    tenant_id: str
    kind: str
    credential_id: str
    name: str | None = None
    secret: str | None = None  # kept only where it must be used, not just compared (phone auth token)
    # The tenant is active: a deactivated tenant's credentials are still recognised (so each
    # channel can say so in its own way), but nothing they send opens or changes an incident.
    active: bool = True


# The longest a cached credential is used without looking again (see the module doc).
CACHE_SECONDS = 30.0
CACHE_ENTRIES = 10_000
CREDENTIAL_LOOKUPS = Counter(
    "aftercare_intake_credential_lookups_total",
    "Credential lookups of the channels, by whether the cache answered (hit) or the store (miss).",
    ["answered_by"],
)


class CredentialCache:
    """Credential lookups (by credential ``_id``) remembered for ``CACHE_SECONDS``, forgotten per tenant.

    Only found credentials are kept: an unknown key always reads the store (a key issued a
    moment ago works at once). A lookup that was under way while its tenant changed is not
    kept (``generation``), so a slow read cannot put back what an invalidation removed.
    """

    def __init__(self, seconds: float = CACHE_SECONDS, entries: int = CACHE_ENTRIES) -> None:
        self._seconds = seconds
        self._entries = entries
        self._found: dict[str, tuple[Credential, float]] = {}
        self.generation = 0
        # Set while this instance hears tenant changes (adapters/tenant_changes.py); nothing is
        # kept otherwise, since a change could not make it forget.
        self.following = False

    def get(self, credential_key: str) -> Credential | None:
        found = self._found.get(credential_key)
        if found is None:
            return None
        credential, until = found
        if time.monotonic() >= until:
            del self._found[credential_key]
            return None
        return credential

    def put(self, credential_key: str, credential: Credential, generation: int) -> None:
        if not self.following or generation != self.generation:
            return  # deaf to tenant changes, or a tenant changed while this lookup read the store
        if len(self._found) >= self._entries:
            self._found.clear()  # crude, and rare: a full cache is refilled by the next lookups
        self._found[credential_key] = (credential, time.monotonic() + self._seconds)

    def clear(self) -> None:
        self.generation += 1
        self._found.clear()

    def forget_tenant(self, tenant_id: str) -> None:
        self.generation += 1
        for key in [key for key, (credential, _) in self._found.items() if credential.tenant_id == tenant_id]:
            del self._found[key]


class TenantRegistry:
    def __init__(
        self,
        database: AsyncDatabase[dict[str, Any]],
        producer: EventProducer,
        *,
        cache_seconds: float = CACHE_SECONDS,
    ) -> None:
        self.tenants = database["tenants"]
        self._credentials = database["credentials"]
        self._relay = OutboxRelay(producer)
        self.cache = CredentialCache(cache_seconds)

    async def ensure_indexes(self) -> None:
        await self._credentials.create_index("tenant_id")
        await OutboxRelay.ensure_indexes(self.tenants)

    # --- profile -------------------------------------------------------------------------

    async def upsert(self, tenant_id: str, profile: TenantProfile) -> tuple[Tenant, bool]:
        """Create or replace a tenant's profile and announce it; returns (tenant, created)."""
        now = datetime.now(UTC)
        current = await self.tenants.find_one({"_id": tenant_id}, {"portal_slug": 1})
        slug = profile.portal_slug or (current or {}).get("portal_slug") or new_portal_slug()
        tenant = Tenant(tenant_id=tenant_id, **(profile.model_dump() | {"portal_slug": slug}))
        # The notifier sets these as Reply-To of customer emails, so replies join the incident.
        inbound = sorted(
            [d["value"] async for d in self._credentials.find({"kind": EMAIL, "tenant_id": tenant_id}, {"value": 1})]
        )
        event = envelope_for(
            TenantUpserted(
                tenant_id=tenant_id,
                name=tenant.name,
                active=tenant.active,
                tier=tenant.tier,
                contacts=tenant.contacts,
                systems=tenant.systems,
                status_page_slug=slug,
                inbound_emails=inbound,
                languages=tenant.languages,
                probe_allowlist=tenant.probe_allowlist,
            ),
            source="intake",
            tenant_id=tenant_id,
            time=now,
        )
        # The slug first: if another tenant holds it, CredentialTaken leaves the tenant unchanged
        # and unannounced (a 409 must mean nothing happened).
        await self._register(PORTAL, slug, tenant_id, name="web portal", replace=True, active=tenant.active)
        # Every credential carries the tenant's state, so a channel's lookup (one read by _id)
        # also says whether the tenant may report; written before the profile, so a crash in
        # between leaves a deactivation applied at the doors (the admin's retry finishes it).
        await self._credentials.update_many({"tenant_id": tenant_id}, {"$set": {"active": tenant.active}})
        # A new slug replaces the old link; the old one must stop opening this tenant's form.
        await self._credentials.delete_many({"kind": PORTAL, "tenant_id": tenant_id, "value": {"$ne": slug}})
        fields = tenant.model_dump(mode="json") | {"updated_at": now}
        update = outbox.add_to_update({"$set": fields, "$setOnInsert": {"created_at": now}}, event)
        await self.tenants.update_one({"_id": tenant_id}, update, upsert=True)
        self.cache.forget_tenant(tenant_id)
        await self._relay.flush(self.tenants, tenant_id)
        return tenant, current is None

    async def get(self, tenant_id: str) -> Tenant:
        document = await self.tenants.find_one({"_id": tenant_id}, {"outbox": 0})
        if document is None:
            raise TenantNotFound(tenant_id)
        return Tenant.model_validate(document)

    async def all(self) -> list[Tenant]:
        return [Tenant.model_validate(d) async for d in self.tenants.find({}, {"outbox": 0}).sort("_id")]

    # --- credentials (issued here, shown once) -------------------------------------------

    async def issue_api_key(self, tenant_id: str, name: str, key: str | None = None) -> tuple[str, str]:
        """Returns (key id, the key itself); only the digest is stored."""
        await self.get(tenant_id)
        key = key or new_api_key()
        credential_id = digest(key)[:12]
        await self._register(API_KEY, digest(key), tenant_id, name=name, credential_id=credential_id)
        return credential_id, key

    async def revoke_api_key(self, tenant_id: str, key_id: str) -> bool:
        result = await self._credentials.delete_one({"kind": API_KEY, "tenant_id": tenant_id, "credential_id": key_id})
        if result.deleted_count != 1:
            return False
        # Announce the tenant again: every instance forgets the tenant's cached credentials.
        await self._announce_again(tenant_id)
        return True

    async def _announce_again(self, tenant_id: str) -> None:
        current = await self.get(tenant_id)
        await self.upsert(
            tenant_id, TenantProfile.model_validate(current.model_dump(include=set(TenantProfile.model_fields)))
        )

    async def issue_routing_key(self, tenant_id: str, name: str, key: str | None = None) -> tuple[str, str]:
        await self.get(tenant_id)
        key = key or new_routing_key()
        credential_id = digest(key)[:12]
        await self._register(PAGERDUTY, digest(key), tenant_id, name=name, credential_id=credential_id)
        return credential_id, key

    async def set_alertmanager_token(self, tenant_id: str, token: str | None = None, *, announce: bool = True) -> str:
        await self.get(tenant_id)
        token = token or new_bearer_token()
        await self._credentials.delete_many({"kind": ALERTMANAGER, "tenant_id": tenant_id})
        await self._register(ALERTMANAGER, digest(token), tenant_id, name="alertmanager")
        if announce:
            await self._announce_again(tenant_id)  # every instance forgets the old token
        return token

    async def set_inbound_emails(self, tenant_id: str, emails: InboundEmails) -> list[str]:
        await self.get(tenant_id)
        for address in emails.addresses:
            await self._register(EMAIL, address, tenant_id, name=address)
        await self._credentials.delete_many(
            {"kind": EMAIL, "tenant_id": tenant_id, "value": {"$nin": emails.addresses}}
        )
        # Announce the tenant again: other services learn its inbound addresses from the event.
        await self._announce_again(tenant_id)
        return emails.addresses

    async def set_phone_line(self, tenant_id: str, line: PhoneLine, *, announce: bool = True) -> None:
        await self.get(tenant_id)
        await self._credentials.delete_many({"kind": PHONE, "tenant_id": tenant_id, "value": {"$ne": line.number}})
        await self._register(PHONE, line.number, tenant_id, name=line.number, secret=line.auth_token, replace=True)
        if announce:  # a replaced line or auth token: every instance forgets the old one
            await self._announce_again(tenant_id)

    async def list_credentials(self, tenant_id: str) -> list[Credential]:
        cursor = self._credentials.find({"tenant_id": tenant_id}).sort([("kind", 1), ("credential_id", 1)])
        return [
            Credential(tenant_id=d["tenant_id"], kind=d["kind"], credential_id=d["credential_id"], name=d.get("name"))
            async for d in cursor
        ]

    # --- lookups the channels make -------------------------------------------------------

    async def by_api_key(self, key: str) -> Credential | None:
        return await self._lookup(API_KEY, digest(key))

    async def by_routing_key(self, routing_key: str) -> Credential | None:
        return await self._lookup(PAGERDUTY, digest(routing_key))

    async def by_alertmanager_token(self, token: str) -> Credential | None:
        return await self._lookup(ALERTMANAGER, digest(token))

    async def by_inbound_email(self, address: str) -> Credential | None:
        return await self._lookup(EMAIL, address.lower())

    async def by_phone_number(self, number: str) -> Credential | None:
        return await self._lookup(PHONE, number)

    async def by_portal_slug(self, slug: str) -> Credential | None:
        return await self._lookup(PORTAL, slug)

    async def _lookup(self, kind: str, value: str) -> Credential | None:
        credential_key = f"{kind}|{value}"
        cached = self.cache.get(credential_key)
        if cached is not None:
            CREDENTIAL_LOOKUPS.labels("cache").inc()
            return cached
        CREDENTIAL_LOOKUPS.labels("store").inc()
        generation = self.cache.generation
        document = await self._credentials.find_one({"_id": credential_key})
        if document is None:
            return None
        credential = Credential(
            tenant_id=document["tenant_id"],
            kind=kind,
            credential_id=document["credential_id"],
            name=document.get("name"),
            secret=document.get("secret"),
            active=document.get("active", True),
        )
        self.cache.put(credential_key, credential, generation)
        return credential

    async def _register(
        self,
        kind: str,
        value: str,
        tenant_id: str,
        *,
        name: str | None = None,
        credential_id: str | None = None,
        secret: str | None = None,
        replace: bool = False,
        active: bool | None = None,
    ) -> None:
        if active is None:
            current = await self.tenants.find_one({"_id": tenant_id}, {"active": 1})
            active = bool((current or {}).get("active", True))
        document = {
            "_id": f"{kind}|{value}",
            "kind": kind,
            "value": value,
            "tenant_id": tenant_id,
            "credential_id": credential_id or value,
            "name": name,
            "secret": secret,
            "active": active,
            "created_at": datetime.now(UTC),
        }
        try:
            await self._credentials.insert_one(document)
        except DuplicateKeyError:
            holder = await self._credentials.find_one({"_id": document["_id"]}, {"tenant_id": 1})
            if holder is not None and holder["tenant_id"] != tenant_id:
                raise CredentialTaken(f"this {kind} credential belongs to another tenant") from None
            if replace:
                await self._credentials.replace_one({"_id": document["_id"]}, document)

    # --- seed ----------------------------------------------------------------------------

    async def load_seed(self, path: Path) -> list[str]:
        """Register the tenants of a seed file (JSON list); safe to run at every start.

        Each entry: ``{"tenant_id", "profile": {...}, "api_keys": [{"name", "key"}],
        "pagerduty_routing_keys": [...], "alertmanager_token", "inbound_emails": [...],
        "phone_line": {"number", "auth_token"}}``. Secrets in a seed file are for demos and tests.
        """
        entries = json.loads(await asyncio.to_thread(path.read_text))
        loaded = []
        for entry in entries:
            tenant_id = entry["tenant_id"]
            await self.upsert(tenant_id, TenantProfile.model_validate(entry["profile"]))
            for api_key in entry.get("api_keys", []):
                await self.issue_api_key(tenant_id, api_key.get("name", "seed"), api_key["key"])
            for routing_key in entry.get("pagerduty_routing_keys", []):
                await self.issue_routing_key(tenant_id, "seed", routing_key)
            if entry.get("alertmanager_token"):
                # Seeds are for demos and tests: the upsert above announced the tenant already.
                await self.set_alertmanager_token(tenant_id, entry["alertmanager_token"], announce=False)
            if entry.get("inbound_emails"):
                await self.set_inbound_emails(tenant_id, InboundEmails(addresses=entry["inbound_emails"]))
            if entry.get("phone_line"):
                await self.set_phone_line(tenant_id, PhoneLine.model_validate(entry["phone_line"]), announce=False)
            loaded.append(tenant_id)
        log.info("seed tenants loaded", tenants=loaded, file=str(path))
        return loaded
