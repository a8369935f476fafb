"""``python -m aftercare.customer_system --port N``: serve the demo customer system."""

from __future__ import annotations

import argparse
import os

import uvicorn

from aftercare.customer_system.app import BreakMode, CustomerSystem, create_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Aftercare demo customer system")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument(
        "--token",
        default=os.environ.get("AFTERCARE_CUSTOMER_SYSTEM_TOKEN") or None,
        help="Bearer credential the fix endpoints require (env AFTERCARE_CUSTOMER_SYSTEM_TOKEN); none = open",
    )
    parser.add_argument("--slow-seconds", type=float, default=2.0, help="How slow /health is when degraded")
    parser.add_argument("--mode", choices=[m.value for m in BreakMode], default="healthy", help="State at start")
    args = parser.parse_args(argv)
    system = CustomerSystem(token=args.token, slow_seconds=args.slow_seconds, mode=BreakMode(args.mode))
    uvicorn.run(create_app(system), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
