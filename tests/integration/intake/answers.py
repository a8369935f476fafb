"""Checks on intake's HTTP answers shared by the intake tests."""

from __future__ import annotations

from typing import Any

import httpx


def assert_problem(answer: httpx.Response, status: int) -> dict[str, Any]:
    """An RFC 9457 problem with the given status and a detail a person can act on."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json"), answer.headers
    problem = answer.json()
    assert problem["status"] == status
    assert problem["type"].startswith("https://")
    assert problem["title"]
    assert len(problem["detail"]) > 10, problem
    return dict(problem)
