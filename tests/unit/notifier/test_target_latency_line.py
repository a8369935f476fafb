"""The points of a target's latency sparkline: scaled to the peak, unanswered probes at the top."""

from __future__ import annotations

from aftercare.notifier.domain.target_latency import HEIGHT, WIDTH, latency_line


def test_latencies_scale_to_their_peak_and_a_probe_without_answer_is_drawn_at_the_top() -> None:
    line = latency_line(
        [
            {"latency_ms": 50.0, "status": "up"},
            {"latency_ms": 100.0, "status": "degraded"},
            {"latency_ms": None, "status": "down"},
        ]
    )
    xs_ys = [tuple(float(v) for v in point.split(",")) for point in line.points.split()]
    assert [x for x, _ in xs_ys] == [0.0, WIDTH / 2, WIDTH]
    # y grows downwards: the peak and the failed probe touch the top, half the peak sits halfway
    assert [y for _, y in xs_ys] == [HEIGHT + 1 - HEIGHT / 2, 1.0, 1.0]
    assert (line.latest_ms, line.peak_ms, line.failed, line.samples) == (None, 100.0, 1, 3)


def test_a_single_sample_and_no_samples_still_make_a_drawable_line() -> None:
    single = latency_line([{"latency_ms": 7.0, "status": "up"}])
    assert single.points == f"0.0,{1.0:.1f}" and single.latest_ms == 7.0
    empty = latency_line([])
    assert empty.points == "" and empty.samples == 0 and empty.latest_ms is None
