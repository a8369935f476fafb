"""Operators end to end: registered through intake's admin API, published on the tenants topic,
checked by another service's own copy (``operator_service.py``, a real process with its own
database and consumer group) with ``require_role``.

Each test registers operators of its own (unique ids and emails): the tenants topic is shared by
every intake of the session, and the other service's copy sees them all.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import IntakeUnderTest
from kafka_helpers import Infrastructure, unique_name, wait_until
from localinfra import free_port

pytestmark = pytest.mark.integration

OPERATOR_SERVICE = Path(__file__).parent.parent / "operator_service.py"
PROBLEM_JSON = "application/problem+json"
ENDPOINTS = {
    "viewer": ("GET", "/incidents"),
    "responder": ("POST", "/approvals/a-1/grant"),
    "admin": ("PUT", "/rules/r-1"),
}
RANK = {"viewer": 0, "responder": 1, "admin": 2}
# How long a change may take to reach another service: "refused everywhere within seconds".
PROPAGATION_S = 10.0


@dataclass
class OtherService:
    base_url: str
    log_file: Path
    process: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def other_service(infrastructure: Infrastructure, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OtherService]:
    """A service other than intake that keeps its own operator copy from Kafka."""
    workdir = tmp_path_factory.mktemp("operator-service")
    port = free_port()
    database = unique_name("opsvc").replace("-", "_")
    log_file = workdir / "service.log"
    with log_file.open("ab") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                str(OPERATOR_SERVICE),
                "--bootstrap",
                infrastructure.bootstrap_servers,
                "--mongo-url",
                infrastructure.mongo_url,
                "--database",
                database,
                "--group-prefix",
                f"{database}-",
                "--port",
                str(port),
            ],
            env=dict(os.environ),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    service = OtherService(f"http://127.0.0.1:{port}", log_file, process)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"operator service exited; log:\n{log_file.read_text()[-3000:]}")
            try:
                if httpx.get(service.base_url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"operator service not ready; log:\n{log_file.read_text()[-3000:]}")
            time.sleep(0.3)
        yield service
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_operator_id(role: str) -> str:
    return f"{role}-{uuid.uuid4().hex[:10]}"


async def register(
    client: httpx.AsyncClient, intake: IntakeUnderTest, role: str, **fields: Any
) -> tuple[str, str, dict[str, Any]]:
    """Register an operator and issue it a token at intake; returns (operator id, token, view)."""
    operator_id = new_operator_id(role)
    body = {"name": f"{role.title()} Operator", "email": f"{operator_id}@support.example", "role": role} | fields
    answer = await client.put(f"/admin/operators/{operator_id}", json=body, headers=intake.admin())
    assert answer.status_code == 201, answer.text
    issued = await client.post(f"/admin/operators/{operator_id}/tokens", json={"name": "tests"}, headers=intake.admin())
    assert issued.status_code == 201, issued.text
    return operator_id, issued.json()["token"], answer.json()


async def answered(http: httpx.AsyncClient, method: str, path: str, token: str, status: int) -> httpx.Response | None:
    answer = await http.request(method, path, headers=bearer(token))
    return answer if answer.status_code == status else None


async def test_each_role_against_each_kind_of_endpoint_of_another_service(
    client: httpx.AsyncClient, intake: IntakeUnderTest, other_service: OtherService
) -> None:
    tokens = {}
    for role in RANK:
        operator_id, token, _ = await register(client, intake, role)
        tokens[role] = (operator_id, token)

    async with httpx.AsyncClient(base_url=other_service.base_url, timeout=10) as http:
        for operator_id, token in tokens.values():
            await wait_until(
                lambda token=token: answered(http, "GET", "/incidents", token, 200),
                timeout=PROPAGATION_S,
                message=f"operator {operator_id} known to the other service",
            )
        for role, (operator_id, token) in tokens.items():
            for needed, (method, path) in ENDPOINTS.items():
                answer = await http.request(method, path, headers=bearer(token))
                if RANK[role] >= RANK[needed]:
                    assert answer.status_code == 200, (role, needed, answer.text)
                    assert answer.json() == {"operator_id": operator_id}
                else:
                    assert answer.status_code == 403, (role, needed, answer.text)
                    assert answer.headers["content-type"] == PROBLEM_JSON
                    assert answer.json()["type"].endswith("/role-too-low")
            # No credential, or a wrong one: 401 on every kind of endpoint.
            for method, path in ENDPOINTS.values():
                for headers in ({}, bearer(token + "x")):
                    answer = await http.request(method, path, headers=headers)
                    assert answer.status_code == 401 and answer.headers["content-type"] == PROBLEM_JSON


async def test_a_removed_operator_and_a_revoked_token_are_refused_everywhere_within_seconds(
    client: httpx.AsyncClient, intake: IntakeUnderTest, other_service: OtherService
) -> None:
    operator_id, token, _ = await register(client, intake, "admin")
    second = await client.post(
        f"/admin/operators/{operator_id}/tokens", json={"name": "laptop"}, headers=intake.admin()
    )
    assert second.status_code == 201
    laptop_token, laptop_id = second.json()["token"], second.json()["id"]

    async with httpx.AsyncClient(base_url=other_service.base_url, timeout=10) as http:
        await wait_until(lambda: answered(http, "PUT", "/rules/r-1", laptop_token, 200), timeout=PROPAGATION_S)

        revoked = await client.delete(f"/admin/operators/{operator_id}/tokens/{laptop_id}", headers=intake.admin())
        assert revoked.status_code == 204
        await wait_until(
            lambda: answered(http, "GET", "/incidents", laptop_token, 401),
            timeout=PROPAGATION_S,
            message="the revoked token refused by the other service",
        )
        assert (await http.put("/rules/r-1", headers=bearer(token))).status_code == 200  # the other token still works

        removed = await client.delete(f"/admin/operators/{operator_id}", headers=intake.admin())
        assert removed.status_code == 204
        await wait_until(
            lambda: answered(http, "GET", "/incidents", token, 401),
            timeout=PROPAGATION_S,
            message="the removed operator refused by the other service",
        )
        for method, path in ENDPOINTS.values():
            answer = await http.request(method, path, headers=bearer(token))
            assert answer.status_code == 401 and answer.json()["title"] == "Unknown operator token"

    assert (await client.get(f"/admin/operators/{operator_id}", headers=intake.admin())).status_code == 404
    again = await client.delete(f"/admin/operators/{operator_id}", headers=intake.admin())
    assert again.status_code == 404 and again.headers["content-type"] == PROBLEM_JSON


async def test_a_role_change_and_a_deactivation_reach_the_other_service(
    client: httpx.AsyncClient, intake: IntakeUnderTest, other_service: OtherService
) -> None:
    operator_id, token, view = await register(client, intake, "viewer")
    body = {"name": view["name"], "email": view["email"], "role": "responder"}
    async with httpx.AsyncClient(base_url=other_service.base_url, timeout=10) as http:
        await wait_until(lambda: answered(http, "POST", "/approvals/a-1/grant", token, 403), timeout=PROPAGATION_S)
        promoted = await client.put(f"/admin/operators/{operator_id}", json=body, headers=intake.admin())
        assert promoted.status_code == 200 and promoted.json()["role"] == "responder"
        await wait_until(lambda: answered(http, "POST", "/approvals/a-1/grant", token, 200), timeout=PROPAGATION_S)

        deactivated = await client.put(
            f"/admin/operators/{operator_id}", json=body | {"active": False}, headers=intake.admin()
        )
        assert deactivated.status_code == 200
        answer = await wait_until(lambda: answered(http, "GET", "/incidents", token, 403), timeout=PROPAGATION_S)
        assert answer.json()["type"].endswith("/operator-deactivated")


async def test_browser_sign_in_on_another_service_checks_the_argon2_password(
    client: httpx.AsyncClient, intake: IntakeUnderTest, other_service: OtherService
) -> None:
    password = "correct horse battery staple"
    operator_id, _, view = await register(client, intake, "responder", password=password)
    assert view["has_password"] is True and "password" not in view and "password_hash" not in view
    async with httpx.AsyncClient(base_url=other_service.base_url, timeout=30) as http:
        signed_in = await wait_until(
            lambda: _login(http, view["email"], password, 200), timeout=PROPAGATION_S, message="sign-in accepted"
        )
        assert signed_in.json() == {"operator_id": operator_id, "role": "responder"}
        assert await _login(http, view["email"], password + "!", 401) is not None
        assert await _login(http, "nobody@support.example", password, 401) is not None


async def _login(http: httpx.AsyncClient, email: str, password: str, status: int) -> httpx.Response | None:
    answer = await http.post("/login", json={"email": email, "password": password})
    return answer if answer.status_code == status else None


async def test_the_operator_admin_api_says_what_to_change(client: httpx.AsyncClient, intake: IntakeUnderTest) -> None:
    operator_id = new_operator_id("admin")
    good = {"name": "Grace", "email": f"{operator_id}@support.example", "role": "admin"}
    url = f"/admin/operators/{operator_id}"

    assert (await client.put(url, json=good)).status_code == 401
    assert (await client.put(url, json=good, headers=bearer("not-the-admin-token"))).status_code == 403

    cases = [
        (good | {"email": "grace"}, "email"),
        (good | {"role": "superuser"}, "role"),
        (good | {"password": "short"}, "password"),
        (good | {"tenants": ["Not A Tenant"]}, "tenants"),
        (good | {"surprise": 1}, "surprise"),
        ({"name": "Grace"}, "email"),
    ]
    for body, field in cases:
        answer = await client.put(url, json=body, headers=intake.admin())
        assert answer.status_code == 422, (body, answer.text)
        assert answer.headers["content-type"] == PROBLEM_JSON
        assert any(error["field"].startswith(field) for error in answer.json()["errors"]), answer.json()
    bad_id = await client.put("/admin/operators/Bad%20Id", json=good, headers=intake.admin())
    assert bad_id.status_code == 422

    created = await client.put(url, json=good | {"tenants": ["tenant-a"]}, headers=intake.admin())
    assert created.status_code == 201 and created.json()["tenants"] == ["tenant-a"]
    other_id = new_operator_id("viewer")
    taken = await client.put(
        f"/admin/operators/{other_id}", json=good | {"email": good["email"].upper()}, headers=intake.admin()
    )
    assert taken.status_code == 409 and taken.json()["type"].endswith("/email-taken")

    missing = new_operator_id("ghost")
    for method, path in (
        ("GET", f"/admin/operators/{missing}"),
        ("POST", f"/admin/operators/{missing}/tokens"),
        ("DELETE", f"/admin/operators/{missing}/tokens/abc"),
        ("DELETE", f"/admin/operators/{missing}"),
    ):
        answer = await client.request(method, path, headers=intake.admin(), json={} if method == "POST" else None)
        assert answer.status_code == 404 and answer.headers["content-type"] == PROBLEM_JSON, (method, path)
    no_token = await client.delete(f"{url}/tokens/abc", headers=intake.admin())
    assert no_token.status_code == 404 and no_token.json()["type"].endswith("/token-not-found")

    listed = await client.get("/admin/operators", headers=intake.admin())
    assert operator_id in [operator["operator_id"] for operator in listed.json()]
    assert all("password_hash" not in operator and "digest" not in str(operator) for operator in listed.json())
