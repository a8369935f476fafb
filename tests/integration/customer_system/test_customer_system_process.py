"""The customer system as the tests and the demo run it: its own process, real HTTP."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx

from customer_system_process import customer_system


def test_the_process_breaks_is_fixed_and_counts_a_slow_fix_on_arrival(tmp_path: Path) -> None:
    with customer_system(tmp_path, token="t0ken") as system:
        assert httpx.get(system.health_url).status_code == 200
        system.break_it("soft", fix_seconds=1.0)
        assert httpx.get(system.health_url).status_code == 503

        # A fix in progress is already counted, and shows as in flight: a caller killed in the middle
        # of it still left its mark.
        done = threading.Event()

        def restart() -> None:
            httpx.post(
                f"{system.base_url}/admin/restart-service", headers={"Authorization": "Bearer t0ken"}, timeout=10
            )
            done.set()

        caller = threading.Thread(target=restart)
        caller.start()
        while system.calls()["fixes_in_flight"] == 0 and not done.is_set():
            pass
        assert system.count("restart-service") == 1
        caller.join()
        assert httpx.get(system.health_url).status_code == 200
        assert system.calls()["max_fixes_in_flight"] == 1
