"""Store time per command shape, per process: which queries a service spends the store on.

    rm -f /tmp/store-time-*.txt
    PYTHONPATH=bench/store_time_per_command AFTERCARE_STORE_TIME=1 uv run --no-sync python bench/remediation_runs.py
    head -15 /tmp/store-time-*.txt

Python imports ``sitecustomize`` at start-up in every process that has this folder on its path (a
bench's services inherit the environment). With ``AFTERCARE_STORE_TIME`` set, it registers a
PyMongo ``CommandListener`` that sums, per shape (command, collection, the filter's keys and
operators, the sort), how many calls and how many milliseconds from sending to the reply; every
5 s and at exit it writes ``/tmp/store-time-<pid>.txt`` (first line: the process's command line),
largest total first. The times include queueing in the store and in the process's event loop.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import sys
import threading
import time
from typing import Any

if os.environ.get("AFTERCARE_STORE_TIME"):
    from pymongo import monitoring

    _totals: collections.defaultdict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    _pending: dict[int, str] = {}

    def _keys(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: _keys(v) if k.startswith("$") or isinstance(v, dict) else "?" for k, v in value.items()}
        if isinstance(value, list):
            return [_keys(item) for item in value[:1]]
        return "?"

    def _shape(command: Any) -> str:
        name = next(iter(command))
        collection = command.get(name)
        query = command.get("filter") or command.get("query")
        for plural in ("updates", "deletes"):
            if command.get(plural):
                query = command[plural][0].get("q")
        sort = command.get("sort")
        return f"{name} {collection} {json.dumps(_keys(query), default=str)}" + (f" sort={list(sort)}" if sort else "")

    class _StoreTime(monitoring.CommandListener):
        def started(self, event: monitoring.CommandStartedEvent) -> None:
            _pending[event.request_id] = _shape(event.command)

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            total = _totals[_pending.pop(event.request_id, "?")]
            total[0] += 1
            total[1] += event.duration_micros / 1000

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            total = _totals["FAILED " + _pending.pop(event.request_id, "?")]
            total[0] += 1
            total[1] += event.duration_micros / 1000

    def _write() -> None:
        with open(f"/tmp/store-time-{os.getpid()}.txt", "w") as out:
            out.write(" ".join(sys.argv) + "\n")
            for shape, (calls, ms) in sorted(_totals.items(), key=lambda item: -item[1][1]):
                out.write(f"{ms:10.0f} ms {int(calls):7d} x {ms / max(calls, 1):8.2f} ms  {shape}\n")

    def _every_5_s() -> None:
        while True:
            time.sleep(5)
            _write()

    monitoring.register(_StoreTime())
    threading.Thread(target=_every_5_s, daemon=True).start()
    atexit.register(_write)
