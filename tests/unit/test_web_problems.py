"""aftercare.events.web on a real HTTP server (uvicorn, as every service runs): what a caller gets
when something goes wrong that is not their fault, and when the body cannot be read as JSON."""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from pymongo.errors import ServerSelectionTimeoutError

from aftercare.events.web import install_problem_handlers

from localinfra import free_port


class Report(BaseModel):
    title: str


def demo_app() -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app, service="Demo")

    @app.get("/bug")
    async def bug() -> dict[str, str]:
        raise KeyError("a bug of ours")

    @app.get("/outage")
    async def outage() -> dict[str, str]:
        raise ServerSelectionTimeoutError("store unreachable")

    @app.get("/fine")
    async def fine() -> dict[str, str]:
        return {"status": "fine"}

    @app.post("/reports")
    async def report(body: Report) -> dict[str, str]:
        return {"title": body.title}

    return app


@pytest.fixture
async def server() -> AsyncIterator[int]:
    port = free_port()
    config = uvicorn.Config(demo_app(), host="127.0.0.1", port=port, log_config=None, access_log=False)
    running = uvicorn.Server(config)
    task = asyncio.create_task(running.serve())
    while not running.started:  # noqa: ASYNC110 (uvicorn offers no event to wait on)
        await asyncio.sleep(0.01)
    yield port
    running.should_exit = True
    await task


def exchange(port: int, requests: list[tuple[str, str, bytes | None]]) -> list[tuple[int, dict[str, str], Any]]:
    """Send the requests one after another on ONE kept-alive connection, as an HTTP client with a
    connection pool does; a connection the server dropped without saying so fails here."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    answers = []
    try:
        for method, path, body in requests:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            answers.append((response.status, dict(response.getheaders()), json.loads(response.read() or b"null")))
    finally:
        connection.close()
    return answers


async def test_a_bug_is_a_500_problem_with_a_correlation_id_and_the_connection_stays_usable(
    server: int, caplog: pytest.LogCaptureFixture
) -> None:
    (status, headers, problem), (after, _, fine) = await asyncio.to_thread(
        exchange, server, [("GET", "/bug", None), ("GET", "/fine", None)]
    )
    assert status == 500 and headers["content-type"] == "application/problem+json"
    assert problem["type"].endswith("/internal-error") and "Retry-After" not in headers
    correlation_id = problem["correlation_id"]
    assert len(correlation_id) >= 16 and correlation_id in problem["detail"]
    assert headers["x-correlation-id"] == correlation_id
    assert (after, fine) == (200, {"status": "fine"})


async def test_an_outage_is_a_503_with_retry_after_and_the_connection_stays_usable(server: int) -> None:
    (status, headers, problem), (after, _, _) = await asyncio.to_thread(
        exchange, server, [("GET", "/outage", None), ("GET", "/fine", None)]
    )
    assert status == 503 and headers["retry-after"].isdigit()
    assert problem["type"].endswith("/unavailable") and problem["correlation_id"]
    assert after == 200


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"title": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "nested"),
        (b'{"title": "caf\xe9"}', "UTF-8"),
    ],
    ids=["10000-deep", "invalid-utf8"],
)
async def test_unreadable_json_is_the_invalid_json_problem(server: int, body: bytes, reason: str) -> None:
    [(status, headers, problem), (after, _, _)] = await asyncio.to_thread(
        exchange, server, [("POST", "/reports", body), ("GET", "/fine", None)]
    )
    assert status == 400 and headers["content-type"] == "application/problem+json"
    assert problem["type"].endswith("/invalid-json") and reason in problem["detail"]
    assert after == 200
