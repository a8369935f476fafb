"""What the dashboard draws for each diagnostic target: its latest probes' latency as a line.

Pure: the samples come from ``target.probed`` events (triage's scheduled diagnostics), kept
by ``adapters/target_latency.py``; here they become the points of a small SVG polyline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# One hour of probes at the default 60 s schedule: enough to see a trend or a spike, small
# enough that one document per target stays tiny. Older samples are in triage (24 h, its API).
SAMPLES_KEPT = 60

WIDTH = 120.0
HEIGHT = 22.0


@dataclass(frozen=True)
class LatencyLine:
    """A target's sparkline: the polyline's points, and the figures its title states."""

    points: str
    latest_ms: float | None
    peak_ms: float
    failed: int
    samples: int


def latency_line(samples: list[dict[str, Any]]) -> LatencyLine:
    """Oldest sample left, newest right, scaled to the samples' own peak. A probe that got no
    answer (down, refused) has no latency: it is drawn at the top, where the eye looks for trouble."""
    latencies = [s.get("latency_ms") for s in samples]
    answered = [float(v) for v in latencies if isinstance(v, (int, float))]
    peak = max(answered, default=0.0) or 1.0
    step = WIDTH / max(len(samples) - 1, 1)
    coordinates = []
    failed = 0
    for i, sample in enumerate(samples):
        value = sample.get("latency_ms")
        if sample.get("status") in ("down", "refused") or not isinstance(value, (int, float)):
            failed += 1
            height = HEIGHT
        else:
            height = HEIGHT * float(value) / peak
        coordinates.append(f"{i * step:.1f},{HEIGHT + 1 - height:.1f}")
    latest = latencies[-1] if latencies and isinstance(latencies[-1], (int, float)) else None
    return LatencyLine(
        points=" ".join(coordinates),
        latest_ms=float(latest) if latest is not None else None,
        peak_ms=max(answered, default=0.0),
        failed=failed,
        samples=len(samples),
    )
