"""Whether a probe's answer means "fixed", by the runbook's criteria."""

from __future__ import annotations

from dataclasses import dataclass

from aftercare.remediation.domain.runbook import Verification


@dataclass(frozen=True)
class ProbeAnswer:
    status: int | None
    latency_ms: float
    body: str = ""
    error: str | None = None

    def describe(self) -> str:
        if self.error:
            return f"no answer ({self.error}) after {self.latency_ms:.0f} ms"
        return f"HTTP {self.status} in {self.latency_ms:.0f} ms"


def judge(criteria: Verification, answer: ProbeAnswer) -> tuple[bool, str]:
    """(healthy, what was seen against what was expected)."""
    seen = answer.describe()
    if answer.error or answer.status is None:
        return False, seen
    if answer.status not in criteria.expect_status:
        return False, f"{seen}; expected status {', '.join(map(str, criteria.expect_status))}"
    if criteria.max_latency_ms is not None and answer.latency_ms > criteria.max_latency_ms:
        return False, f"{seen}; slower than {criteria.max_latency_ms:.0f} ms"
    if criteria.body_contains is not None and criteria.body_contains not in answer.body:
        return False, f"{seen}; body lacks {criteria.body_contains!r}"
    return True, seen
