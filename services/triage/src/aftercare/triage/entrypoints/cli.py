"""Operator commands of the triage service: ``python -m aftercare.triage <command>``.

    python -m aftercare.triage                  run the service (the default)
    python -m aftercare.triage rebuild-groups   drop the grouping state and replay it from Kafka

Kafka, store and database come from the same environment as the service's
(``AFTERCARE_KAFKA_BOOTSTRAP_SERVERS``, ``AFTERCARE_MONGO_URL``, ``AFTERCARE_TRIAGE_DATABASE``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from pymongo import AsyncMongoClient

from aftercare.events import topics
from aftercare.triage.adapters.event_log import read_topic
from aftercare.triage.adapters.store import FlapHistory, GroupingHeads
from aftercare.triage.service_layer.rebuild_groups import rebuild_grouping_state
from aftercare.triage.settings import TriageSettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m aftercare.triage", description="Aftercare triage.")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the triage service (the default)")
    rebuild = commands.add_parser(
        "rebuild-groups",
        help="drop triage's grouping state (first incident per group key, flapping history) and replay it "
        "from the incidents and triage topics; stop the triage instances first",
    )
    rebuild.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


async def rebuild_groups(settings: TriageSettings) -> dict[str, Any]:
    incidents_log = await read_topic(settings.kafka_bootstrap_servers, topics.INCIDENTS)
    triage_log = await read_topic(settings.kafka_bootstrap_servers, topics.TRIAGE)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongo_url, tz_aware=True, serverSelectionTimeoutMS=10000
    )
    try:
        database = client[settings.database]
        summary = await rebuild_grouping_state(
            incidents_log, triage_log, GroupingHeads(database), FlapHistory(database), database["incidents"]
        )
    finally:
        await client.close()
    return asdict(summary)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in (None, "serve"):
        from aftercare.events.runtime import serve
        from aftercare.triage.bootstrap import build_app

        settings = TriageSettings()
        serve(build_app(settings), settings)
        return 0
    settings = TriageSettings()
    summary = asyncio.run(rebuild_groups(settings))
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"grouping state rebuilt in database {settings.database!r}: {summary['reports']} reports and "
            f"{summary['decisions']} decisions read, {summary['first_incidents']} first incidents, "
            f"{summary['resolved']} resolved or closed, {summary['heads']} group keys held, "
            f"{summary['flap_sources']} sources with flapping history"
            + (f"; {len(summary['skipped'])} decisions without their report on the topic" if summary["skipped"] else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
