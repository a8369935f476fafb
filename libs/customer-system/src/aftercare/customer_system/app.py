"""The demo customer system's HTTP app.

Health:
    ``GET /health`` — 200 ``{"status": "healthy"}``; 503 ``{"status": "broken"}`` when broken
    (modes ``soft``, ``hard``, ``corrupt``); 200 ``{"status": "degraded"}`` after ``slow_seconds``
    when degraded (mode ``slow``).

Fixes (what a runbook calls; each needs ``Authorization: Bearer <token>`` when a token is set):
    ``POST /admin/restart-service``   fixes ``soft``
    ``POST /admin/clear-cache``       fixes ``slow``
    ``POST /admin/restore-backup``    fixes ``corrupt`` and ``soft``
    ``POST /admin/failover-database`` fixes ``soft``
    ``POST /admin/rotate-logs``       fixes nothing (harmless housekeeping)
Nothing fixes ``hard``: it stands for the fault the runbook cannot repair.

Controls (for tests and the demo; open, the demo system has no secrets to protect):
    ``POST /admin/break?mode=soft|hard|slow|corrupt[&fix_seconds=S]`` — break it; ``fix_seconds``
    makes every fix take that long to answer (a slow restart, to kill a caller in the middle).
    ``POST /admin/heal`` — healthy again without counting as a fix.
    ``POST /admin/reset`` — healthy, counters zeroed.
    ``GET /admin/calls`` — how often each endpoint was called (and, for fix calls that carry
    ``?incident=<id>``, how often per incident), the mode, and the most fix calls that were ever
    in progress at once.

Every call is counted when it arrives, before any delay, so a caller killed in the middle of a
fix still shows up in the count: that is what "ran at most once" is checked against.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse


class BreakMode(StrEnum):
    HEALTHY = "healthy"
    SOFT = "soft"
    HARD = "hard"
    SLOW = "slow"
    CORRUPT = "corrupt"


# Which fix repairs which mode; HARD is in no set on purpose.
_FIXES: dict[str, frozenset[BreakMode]] = {
    "restart-service": frozenset({BreakMode.SOFT}),
    "clear-cache": frozenset({BreakMode.SLOW}),
    "restore-backup": frozenset({BreakMode.CORRUPT, BreakMode.SOFT}),
    "failover-database": frozenset({BreakMode.SOFT}),
    "rotate-logs": frozenset(),
}


@dataclass
class CustomerSystem:
    """The system's state; one per app, changed only by its endpoints."""

    token: str | None = None
    slow_seconds: float = 2.0
    mode: BreakMode = BreakMode.HEALTHY
    fix_seconds: float = 0.0
    calls: Counter[str] = field(default_factory=Counter)
    # Fix calls per incident, for runbooks that name the incident (``query: incident={incident.incident_id}``):
    # "each not-safe-to-repeat step ran at most once per incident" is checked against these.
    calls_by_incident: dict[str, Counter[str]] = field(default_factory=dict)
    fixes_in_flight: int = 0
    max_fixes_in_flight: int = 0
    # Who is fixing right now (the callers' User-Agent): which of several automation instances
    # holds a fix in flight, as the system's own access log would show.
    callers_in_flight: Counter[str] = field(default_factory=Counter)

    def authorised(self, request: Request) -> bool:
        if not self.token:
            return True
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(value.strip(), self.token)


def _problem(status: int, title: str, detail: str) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status,
        media_type="application/problem+json",
    )


def create_app(system: CustomerSystem | None = None) -> FastAPI:
    """Build the app around ``system`` (a fresh healthy one when not given)."""
    state = system or CustomerSystem()
    app = FastAPI(title="Aftercare demo customer system", version="1")
    app.state.system = state

    @app.get("/health")
    async def health() -> JSONResponse:
        """The system's health as a monitor or a diagnosis probe sees it."""
        state.calls["health"] += 1
        if state.mode is BreakMode.HEALTHY:
            return JSONResponse({"status": "healthy"})
        if state.mode is BreakMode.SLOW:
            await asyncio.sleep(state.slow_seconds)
            return JSONResponse({"status": "degraded"})
        return JSONResponse({"status": "broken", "mode": state.mode.value}, status_code=503)

    def fix_endpoint(action: str) -> None:
        async def fix(request: Request) -> JSONResponse:
            state.calls[action] += 1
            if incident := request.query_params.get("incident"):
                state.calls_by_incident.setdefault(action, Counter())[incident] += 1
            if not state.authorised(request):
                return _problem(401, "Credential missing or wrong", "Send Authorization: Bearer <the system's token>.")
            state.fixes_in_flight += 1
            state.max_fixes_in_flight = max(state.max_fixes_in_flight, state.fixes_in_flight)
            caller = request.headers.get("user-agent", "")
            state.callers_in_flight[caller] += 1
            try:
                if state.fix_seconds > 0:
                    await asyncio.sleep(state.fix_seconds)
                repaired = state.mode in _FIXES[action]
                if repaired:
                    state.mode = BreakMode.HEALTHY
                return JSONResponse({"action": action, "done": True, "status": state.mode.value})
            finally:
                state.fixes_in_flight -= 1
                state.callers_in_flight[caller] -= 1
                if state.callers_in_flight[caller] <= 0:
                    del state.callers_in_flight[caller]

        fix.__doc__ = f"Admin action '{action}': counted on arrival; repairs {sorted(_FIXES[action]) or 'nothing'}."
        app.post(f"/admin/{action}", name=action)(fix)

    for action in _FIXES:
        fix_endpoint(action)

    @app.post("/admin/break")
    async def break_system(
        mode: Annotated[BreakMode, Query(description="soft, hard, slow or corrupt")],
        fix_seconds: Annotated[float, Query(ge=0, le=600)] = 0.0,
    ) -> dict[str, Any]:
        """Put the system into a broken state (``healthy`` heals it)."""
        state.calls["break"] += 1
        state.mode = mode
        state.fix_seconds = fix_seconds
        return {"status": state.mode.value, "fix_seconds": state.fix_seconds}

    @app.post("/admin/heal")
    async def heal() -> dict[str, Any]:
        """Healthy again, without counting as a fix."""
        state.mode = BreakMode.HEALTHY
        state.fix_seconds = 0.0
        return {"status": state.mode.value}

    @app.post("/admin/reset")
    async def reset() -> dict[str, Any]:
        """Healthy again and every counter zeroed."""
        state.mode = BreakMode.HEALTHY
        state.fix_seconds = 0.0
        state.calls.clear()
        state.calls_by_incident.clear()
        state.max_fixes_in_flight = 0
        return {"status": state.mode.value}

    @app.get("/admin/calls")
    async def calls() -> dict[str, Any]:
        """Calls per endpoint since start (or the last reset), the mode, peak concurrent fixes, and the
        User-Agents of the callers whose fixes are in flight."""
        return {
            "calls": dict(state.calls),
            "calls_by_incident": {action: dict(counts) for action, counts in state.calls_by_incident.items()},
            "mode": state.mode.value,
            "fixes_in_flight": state.fixes_in_flight,
            "max_fixes_in_flight": state.max_fixes_in_flight,
            "callers_in_flight": sorted(state.callers_in_flight),
        }

    return app
