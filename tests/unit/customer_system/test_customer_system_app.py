"""The demo customer system's behaviour: which fix repairs which break, counting, the credential."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from aftercare.customer_system import BreakMode, CustomerSystem, create_app


@pytest_asyncio.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(CustomerSystem(token="s3cret", slow_seconds=0.01))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://system") as http:
        yield http


AUTH = {"Authorization": "Bearer s3cret"}


async def test_a_healthy_system_answers_200(client: httpx.AsyncClient) -> None:
    answer = await client.get("/health")
    assert answer.status_code == 200
    assert answer.json() == {"status": "healthy"}


@pytest.mark.parametrize(
    ("mode", "fix"),
    [("soft", "restart-service"), ("slow", "clear-cache"), ("corrupt", "restore-backup"), ("soft", "restore-backup")],
)
async def test_each_break_is_repaired_by_its_fix(client: httpx.AsyncClient, mode: str, fix: str) -> None:
    (await client.post("/admin/break", params={"mode": mode})).raise_for_status()
    broken = await client.get("/health")
    assert broken.json()["status"] in {"broken", "degraded"}
    assert (await client.post(f"/admin/{fix}", headers=AUTH)).json()["status"] == "healthy"
    assert (await client.get("/health")).status_code == 200


async def test_a_slow_system_answers_degraded(client: httpx.AsyncClient) -> None:
    await client.post("/admin/break", params={"mode": "slow"})
    answer = await client.get("/health")
    assert answer.status_code == 200
    assert answer.json() == {"status": "degraded"}


async def test_nothing_repairs_a_hard_break(client: httpx.AsyncClient) -> None:
    await client.post("/admin/break", params={"mode": "hard"})
    for fix in ("restart-service", "clear-cache", "restore-backup", "failover-database", "rotate-logs"):
        assert (await client.post(f"/admin/{fix}", headers=AUTH)).status_code == 200
    answer = await client.get("/health")
    assert answer.status_code == 503
    assert answer.json() == {"status": "broken", "mode": "hard"}


async def test_the_wrong_fix_leaves_it_broken(client: httpx.AsyncClient) -> None:
    await client.post("/admin/break", params={"mode": "soft"})
    await client.post("/admin/clear-cache", headers=AUTH)
    assert (await client.get("/health")).status_code == 503


async def test_fixes_need_the_credential_and_are_counted_even_when_refused(client: httpx.AsyncClient) -> None:
    await client.post("/admin/break", params={"mode": "soft"})
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
        refused = await client.post("/admin/restart-service", headers=headers)
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"
    assert (await client.get("/health")).status_code == 503
    await client.post("/admin/restart-service", headers=AUTH)
    calls = (await client.get("/admin/calls")).json()
    assert calls["calls"]["restart-service"] == 4
    assert calls["mode"] == BreakMode.HEALTHY.value


async def test_reset_zeroes_the_counters_and_heals(client: httpx.AsyncClient) -> None:
    await client.post("/admin/break", params={"mode": "hard"})
    await client.post("/admin/restart-service", headers=AUTH)
    await client.post("/admin/reset")
    calls = (await client.get("/admin/calls")).json()
    assert calls["calls"] == {}
    assert calls["mode"] == "healthy"
    assert calls["max_fixes_in_flight"] == 0


async def test_an_unknown_break_mode_is_refused(client: httpx.AsyncClient) -> None:
    answer = await client.post("/admin/break", params={"mode": "melted"})
    assert answer.status_code == 422


async def test_the_callers_of_fixes_in_flight_are_listed_by_user_agent() -> None:
    app = create_app(CustomerSystem(token="s3cret"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://system") as http:
        await http.post("/admin/break", params={"mode": "soft", "fix_seconds": 0.5})
        fixing = asyncio.create_task(
            http.post("/admin/restart-service", headers=AUTH | {"User-Agent": "remediation pid 42"})
        )
        for _ in range(100):
            calls = (await http.get("/admin/calls")).json()
            if calls["fixes_in_flight"]:
                break
            await asyncio.sleep(0.01)
        assert calls["callers_in_flight"] == ["remediation pid 42"]
        await fixing
        assert (await http.get("/admin/calls")).json()["callers_in_flight"] == []


async def test_fix_calls_that_name_an_incident_are_counted_per_incident(client: httpx.AsyncClient) -> None:
    await client.post("/admin/restart-service", params={"incident": "inc-1"}, headers=AUTH)
    await client.post("/admin/restart-service", params={"incident": "inc-1"}, headers=AUTH)
    await client.post("/admin/restart-service", params={"incident": "inc-2"}, headers=AUTH)
    await client.post("/admin/restart-service", headers=AUTH)
    calls = (await client.get("/admin/calls")).json()
    assert calls["calls"]["restart-service"] == 4
    assert calls["calls_by_incident"] == {"restart-service": {"inc-1": 2, "inc-2": 1}}
    await client.post("/admin/reset")
    assert (await client.get("/admin/calls")).json()["calls_by_incident"] == {}
