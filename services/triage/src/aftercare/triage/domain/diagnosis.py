"""What probe results mean: the verdict on a system, and what regular diagnostics do next.

Verdict: any probe that found the system down -> confirmed_down; else any that found it slow
or its certificate close to expiry -> degraded; else healthy (the alarm may be false). Probes
that were refused (not on the allow-list) prove nothing and do not count.

Regular diagnostics keep per target: consecutive failures, consecutive slow answers, a rolling
latency baseline (exponentially weighted, from healthy answers only), and the problem currently
open. ``observe`` turns one more result into the next state and, when it is time, a problem to
open (down after ``FAILURES_TO_OPEN`` failures in a row; performance after ``SLOW_TO_OPEN`` answers
far above the baseline) or the open problem to clear (after ``SUCCESSES_TO_CLEAR`` good answers).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from aftercare.events.triage import ProbeResult, Verdict

FAILURES_TO_OPEN = 3
SLOW_TO_OPEN = 3
SUCCESSES_TO_CLEAR = 2
BASELINE_WEIGHT = 0.1  # each healthy answer moves the baseline 10% towards it
BASELINE_MIN_SAMPLES = 10
SLOW_FACTOR = 3.0
SLOW_MIN_EXTRA_MS = 200.0

_EPISODES = uuid.UUID("a8c4d0f2-5d0b-4c8e-9b61-3f7e2a9d4c10")


def verdict_of(results: Sequence[ProbeResult]) -> tuple[Verdict | None, str]:
    counted = [result for result in results if result.status != "refused"]
    if not counted:
        refused = "; ".join(result.detail for result in results) or "no diagnostic target"
        return None, f"Not probed: {refused}."
    down = [result for result in counted if result.status == "down"]
    if down:
        return "confirmed_down", "Confirmed down: " + "; ".join(f"{r.probe} {r.target}: {r.detail}" for r in down) + "."
    slow = [result for result in counted if result.status == "degraded"]
    if slow:
        return "degraded", "Degraded: " + "; ".join(f"{r.probe} {r.target}: {r.detail}" for r in slow) + "."
    return "healthy", "Healthy: every probe passed (" + "; ".join(
        f"{r.probe}: {r.detail}" for r in counted
    ) + "); possibly a false alarm."


ProblemKind = Literal["down", "performance"]


@dataclass(frozen=True)
class OpenProblem:
    incident_id: str
    kind: ProblemKind
    since: datetime


@dataclass(frozen=True)
class TargetHealth:
    failures: int = 0
    slow: int = 0
    successes: int = 0
    baseline_ms: float | None = None
    samples: int = 0
    problem: OpenProblem | None = None


@dataclass(frozen=True)
class Detect:
    problem: OpenProblem
    detail: str


@dataclass(frozen=True)
class Clear:
    problem: OpenProblem
    detail: str


def episode_id(target_id: str, kind: str, since: datetime) -> str:
    """The incident id of one problem episode: the same whichever instance detects it."""
    return str(uuid.uuid5(_EPISODES, f"{target_id}|{kind}|{since.isoformat()}"))


def is_slow(latency_ms: float, baseline_ms: float | None, samples: int) -> bool:
    if baseline_ms is None or samples < BASELINE_MIN_SAMPLES:
        return False
    return latency_ms > max(baseline_ms * SLOW_FACTOR, baseline_ms + SLOW_MIN_EXTRA_MS)


def observe(
    health: TargetHealth, result: ProbeResult, target_id: str, now: datetime
) -> tuple[TargetHealth, Detect | Clear | None]:
    if result.status == "refused":
        return health, None
    if result.status == "down":
        health = replace(health, failures=health.failures + 1, successes=0, slow=0)
        if health.problem is None and health.failures >= FAILURES_TO_OPEN:
            problem = OpenProblem(episode_id(target_id, "down", now), "down", now)
            return replace(health, problem=problem), Detect(
                problem, f"{health.failures} failed probes in a row; last: {result.detail}"
            )
        return health, None

    latency = result.latency_ms or 0.0
    slow = result.status == "degraded" or is_slow(latency, health.baseline_ms, health.samples)
    if slow:
        health = replace(health, slow=health.slow + 1, failures=0, successes=0)
        if health.problem is None and health.slow >= SLOW_TO_OPEN:
            problem = OpenProblem(episode_id(target_id, "performance", now), "performance", now)
            usual = f"{health.baseline_ms:.0f} ms" if health.baseline_ms is not None else "its threshold"
            return replace(health, problem=problem), Detect(
                problem, f"{health.slow} slow answers in a row ({latency:.0f} ms against a usual {usual})"
            )
        return health, None

    # A good answer: it teaches the baseline and counts towards recovery.
    baseline = (
        latency if health.baseline_ms is None else health.baseline_ms + BASELINE_WEIGHT * (latency - health.baseline_ms)
    )
    health = replace(
        health, failures=0, slow=0, successes=health.successes + 1, baseline_ms=baseline, samples=health.samples + 1
    )
    if health.problem is not None and health.successes >= SUCCESSES_TO_CLEAR:
        problem = health.problem
        return replace(health, problem=None), Clear(
            problem, f"{health.successes} good answers in a row ({latency:.0f} ms)"
        )
    return health, None
