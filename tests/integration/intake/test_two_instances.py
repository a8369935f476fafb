"""Two intake processes on one store and one consumer group, hammered with the same keys.

Nothing in a service may assume it is the only instance: reports of one problem that reach
different instances at the same moment must still open one incident, count every occurrence
once, publish every IncidentUpdated, and a rate limit must hold across both instances. This
rests on the store keeping each single-document read-modify-write atomic (on the embedded
store: the build patch, see tests/integration/test_store_atomicity.py); intake's in-process
turns and batched counters cannot help here, since the two instances share none of them.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from aftercare.events import parse_envelope, topics

from .conftest import IntakeUnderTest, _tenant_seed, start_intake, stop_intake
from .test_admin_api import PROFILE
from kafka_helpers import Infrastructure, read_all, unique_name, wait_until

# Two intake processes and 400 requests on a shared two-core test machine take a while to start
# and to answer; the default 300 s per test is too tight when the machine is busy.
pytestmark = pytest.mark.timeout(900)

RATE_LIMIT = 120  # per minute and key, on both instances
PER_INSTANCE = 100  # requests each instance gets in one burst


@pytest.fixture(scope="module")
def two_intakes(
    infrastructure: Infrastructure, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[IntakeUnderTest], dict[str, str]]]:
    """Two intake processes of one deployment (same database and consumer group prefix) and the
    API keys of two tenants: "hammer" (one key) and "numbers" (one key per instance)."""
    workdir: Path = tmp_path_factory.mktemp("two-intakes")
    hammer, hammer_keys = _tenant_seed("hammer", "+15550002001")
    numbers, numbers_keys = _tenant_seed("numbers", "+15550002002")
    second_key = "ak_second_" + unique_name("key").replace("-", "_")
    numbers["api_keys"] = [*numbers["api_keys"], {"name": "second", "key": second_key}]
    database = unique_name("intake_two").replace("-", "_")
    env = {
        "AFTERCARE_INTAKE_RATE_LIMIT_PER_MINUTE": str(RATE_LIMIT),
        # Cached credentials must be forgotten through the tenants topic, not by expiring.
        "AFTERCARE_INTAKE_CREDENTIAL_CACHE_SECONDS": "3600",
    }
    started: list[IntakeUnderTest] = []
    try:
        for name in ("a", "b"):
            started.append(
                start_intake(infrastructure, workdir / name, database=database, seed=[hammer, numbers], extra_env=env)
            )
        keys = {"hammer": hammer_keys.api_key, "numbers-a": numbers_keys.api_key, "numbers-b": second_key}
        yield started, keys
    finally:
        for service in started:
            stop_intake(service)


async def _burst(
    requests: list[tuple[IntakeUnderTest, str, dict[str, Any]]],
) -> list[httpx.Response]:
    """All requests at once, each to its instance with its API key (up to 20 in flight per
    instance: enough to race, few enough for a loaded test machine's connection handling)."""
    clients = {
        service.base_url: httpx.AsyncClient(
            timeout=120.0,
            # A connection per request: a reused one that the server closes as idle at the moment
            # a starved client sends on it fails the request (ReadError) before intake sees it.
            limits=httpx.Limits(max_connections=20, max_keepalive_connections=0),
        )
        for service, _, _ in requests
    }
    try:
        return await asyncio.gather(
            *(
                clients[service.base_url].post(
                    f"{service.base_url}/v1/incidents", headers={"Authorization": f"Bearer {key}"}, json=body
                )
                for service, key, body in requests
            )
        )
    finally:
        for http in clients.values():
            await http.aclose()


async def _rate_window_hits(infrastructure: Infrastructure, database: str) -> dict[str, int]:
    """The hits counted so far per rate-limit window (key and minute), as intake stores them."""
    store: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infrastructure.mongo_url)
    try:
        return {w["_id"]: w["value"] async for w in store[database]["rate_limit_windows"].find({})}
    finally:
        await store.close()


async def _wait_for_a_fresh_rate_window(seconds_needed: float = 30.0) -> None:
    """Rate windows are calendar minutes: start the burst where it fits into one."""
    into_minute = time.time() % 60
    if into_minute > 60 - seconds_needed:
        await asyncio.sleep(60 - into_minute + 0.5)


async def test_one_dedup_key_and_one_rate_limited_key_hammered_through_two_instances(
    two_intakes: tuple[list[IntakeUnderTest], dict[str, str]], infrastructure: Infrastructure
) -> None:
    instances, keys = two_intakes
    dedup_key = unique_name("checkout-down")
    body = {"title": "Checkout fails with 500", "severity": "critical", "dedup_key": dedup_key}
    await _wait_for_a_fresh_rate_window()

    hits_before = await _rate_window_hits(infrastructure, instances[0].database)

    answers = await _burst([(service, keys["hammer"], body) for service in instances for _ in range(PER_INSTANCE)])

    # The rate limit is exact across both instances: in each one-minute window the burst reached
    # (on a busy machine it may straddle two), exactly RATE_LIMIT hits were let through.
    hits_after = await _rate_window_hits(infrastructure, instances[0].database)
    windows = [hits - hits_before.get(window, 0) for window, hits in hits_after.items()]
    assert sum(windows) == 2 * PER_INSTANCE
    allowed = sum(min(hits, RATE_LIMIT) for hits in windows)
    statuses = Counter(answer.status_code for answer in answers)
    assert statuses == {202: allowed, 429: 2 * PER_INSTANCE - allowed}, [
        a.text for a in answers if a.status_code not in (202, 429)
    ]
    assert all(int(a.headers["Retry-After"]) >= 1 for a in answers if a.status_code == 429)
    # One incident: every accepted report went to it, and exactly one opened it.
    accepted = [answer.json() for answer in answers if answer.status_code == 202]
    incident_ids = {a["incident_id"] for a in accepted}
    assert len(incident_ids) == 1
    assert sum(a["created"] for a in accepted) == 1
    (incident_id,) = incident_ids

    # Every accepted report is counted once in the store ...
    store: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(infrastructure.mongo_url)
    try:
        incident = await store[instances[0].database]["incidents"].find_one({"_id": incident_id})
        assert incident is not None
        assert incident["occurrence_count"] == allowed
        assert await store[instances[0].database]["incidents"].count_documents({"tenant_id": "hammer"}) == 1
    finally:
        await store.close()

    # ... and announced once on Kafka: one IncidentReported, an IncidentUpdated per repeat, each
    # with its own count (redelivered copies of an event keep its id and are not counted twice).
    async def announced() -> dict[str, Any] | None:
        records = await read_all(infrastructure.bootstrap_servers, topics.INCIDENTS, timeout=30)
        events = {e.id: e for e in (parse_envelope(r.value) for r in records if r.key == incident_id.encode())}
        updates = [e for e in events.values() if e.type == "incident.updated"]
        return events if len(updates) >= allowed - 1 else None

    events = await wait_until(announced, timeout=90, interval=1.0, message="every IncidentUpdated on Kafka")
    kinds = Counter(e.type for e in events.values())
    assert kinds == {"incident.reported": 1, "incident.updated": allowed - 1}
    counts = sorted(e.data.occurrence_count for e in events.values() if e.type == "incident.updated")
    assert counts == list(range(2, allowed + 1))


async def test_reports_through_two_instances_get_distinct_numbers_without_retries(
    two_intakes: tuple[list[IntakeUnderTest], dict[str, str]], infrastructure: Infrastructure
) -> None:
    instances, keys = two_intakes
    await _wait_for_a_fresh_rate_window()
    requests = [
        (service, keys[key], {"title": f"Printer {i} on floor {key} jammed"})
        for service, key in zip(instances, ("numbers-a", "numbers-b"), strict=True)
        for i in range(PER_INSTANCE)
    ]

    answers = await _burst(requests)

    assert Counter(a.status_code for a in answers) == {202: 2 * PER_INSTANCE}, [
        a.text for a in answers if a.status_code != 202
    ]
    # Distinct and without gaps: no number was handed out twice and then replaced.
    numbers = sorted(int(a.json()["number"].removeprefix("INC-")) for a in answers)
    assert numbers == list(range(numbers[0], numbers[0] + 2 * PER_INSTANCE))
    logs = "".join(service.log_file.read_text(errors="replace") for service in instances)
    assert "incident number already taken" not in logs


async def test_a_deactivated_tenants_key_is_refused_by_every_instance_after_their_caches_were_warm(
    two_intakes: tuple[list[IntakeUnderTest], dict[str, str]],
) -> None:
    """API key lookups are cached per instance (an hour here); deactivating the tenant through one
    instance makes the other refuse the key too, told by the TenantUpserted on the tenants topic."""
    (first, second), _ = two_intakes
    tenant_id = unique_name("cached")
    admin = first.admin()
    async with httpx.AsyncClient(timeout=120.0) as http:
        base = f"{first.base_url}/admin/tenants/{tenant_id}"
        assert (await http.put(base, headers=admin, json=PROFILE)).status_code == 201
        issued = await http.post(f"{base}/api-keys", headers=admin, json={"name": "cache"})
        key = {"Authorization": f"Bearer {issued.json()['secret']}"}

        async def status_at(service: IntakeUnderTest) -> int:
            return (await http.get(f"{service.base_url}/v1/incidents", headers=key)).status_code

        async def answered_from_cache(service: IntakeUnderTest) -> bool:
            before = await _cache_hits(http, service)
            assert await status_at(service) == 200
            return await _cache_hits(http, service) > before

        # Warm: each instance answers the key from its cache (once it hears tenant changes, it keeps them).
        for service in (first, second):
            assert await wait_until(lambda service=service: answered_from_cache(service), timeout=60.0, interval=0.5)
        assert (await http.put(base, headers=admin, json=PROFILE | {"active": False})).status_code == 200

        assert await status_at(first) == 403
        assert await wait_until(
            lambda: _is(status_at(second), 403), timeout=120.0, message="the second instance refuses the key"
        )


async def _cache_hits(http: httpx.AsyncClient, service: IntakeUnderTest) -> float:
    metrics = (await http.get(f"{service.base_url}/metrics")).text
    line = next(
        (
            line
            for line in metrics.splitlines()
            if line.startswith('aftercare_intake_credential_lookups_total{answered_by="cache"}')
        ),
        None,
    )
    return float(line.split()[-1]) if line else 0.0


async def _is(status: Any, expected: int) -> bool:
    return bool(await status == expected)
