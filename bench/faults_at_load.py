"""The issue's fault run at full size, by hand: 2,000 incidents (a third needing remediation)
while each service, the Kafka broker and the store are killed with SIGKILL and started again.

    uv run python bench/faults_at_load.py [--incidents 2000] [--rate 4] [--tenants 7]

The same scenario as ``tests/e2e/test_faults_whole_stack.py`` (``tests/fault_scenario.py``),
which runs a bounded version in the suite. Prints the counts (accepted, resolved, fix calls per
incident, "Resolved" emails per incident) and exits 1 if any promise is broken.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "infra"))
sys.path.insert(0, str(REPO_ROOT / "tests"))

from aftercare_stack import AftercareStack, tenants_for_load  # noqa: E402
from fault_scenario import FINAL_STATUSES, run_faults_under_load  # noqa: E402


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--incidents", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=4.0, help="incidents reported per second")
    parser.add_argument("--tenants", type=int, default=7, help="not a multiple of 3")
    parser.add_argument("--finish-timeout", type=float, default=3600.0)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average at start {os.getloadavg()[0]:.1f}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="aftercare-faults-"))
    tenants = tenants_for_load(args.tenants, systems_each=args.incidents // (3 * args.tenants) + 2)
    with AftercareStack.started(workdir, tenants=tenants) as stack:
        stack.wait_ready(timeout_s=900)
        outcome = await run_faults_under_load(
            stack,
            incidents=args.incidents,
            rate_per_s=args.rate,
            max_incidents=args.incidents,
            finish_timeout_s=args.finish_timeout,
        )
    print(outcome.summary())
    print(f"load average at the end {os.getloadavg()[0]:.1f}; logs in {workdir}")
    expected = {(r.tenant.contact_email, r.number) for r in outcome.reported}
    broken = (
        any(status not in FINAL_STATUSES for status in outcome.statuses.values())
        or len(outcome.statuses) != len(outcome.reported)
        or any(count > 1 for count in outcome.restart_calls.values())
        or any(outcome.resolved_mails.get(key, 0) != 1 for key in expected)
    )
    print("promises kept" if not broken else "PROMISES BROKEN: see the counts above")
    return 1 if broken else 0


if __name__ == "__main__":
    # SIGTERM (a stopped run) unwinds like Ctrl-C, so the stack's processes are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(asyncio.run(main()))
