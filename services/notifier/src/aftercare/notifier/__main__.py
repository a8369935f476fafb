"""`python -m aftercare.notifier` (or `aftercare-notifier`): run the notifier service until SIGTERM.

`aftercare-notifier rebuild`: drop the dashboard's read model and rebuild it from Kafka (the same
settings as the service: `AFTERCARE_KAFKA_BOOTSTRAP_SERVERS`, `AFTERCARE_MONGO_URL`, database).
"""

from __future__ import annotations

import asyncio
import sys

from aftercare.events.runtime import serve
from aftercare.notifier.bootstrap import build_app
from aftercare.notifier.settings import NotifierSettings


async def _rebuild(settings: NotifierSettings) -> int:
    from pymongo import AsyncMongoClient

    from aftercare.notifier.adapters.read_model import IncidentReadModel
    from aftercare.notifier.entrypoints.consumer import DASHBOARD_TOPICS
    from aftercare.notifier.service_layer.rebuild import rebuild_read_model

    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(settings.mongo_url, tz_aware=True)
    try:
        read_model = IncidentReadModel(client[settings.database]["incidents"])
        return await rebuild_read_model(settings.kafka_bootstrap_servers, DASHBOARD_TOPICS, read_model)
    finally:
        await client.close()


def main() -> None:
    settings = NotifierSettings()
    if sys.argv[1:] == ["rebuild"]:
        applied = asyncio.run(_rebuild(settings))
        print(f"read model rebuilt from {applied} events")
        return
    if sys.argv[1:]:
        sys.exit("usage: aftercare-notifier [rebuild]")
    serve(build_app(settings), settings)


if __name__ == "__main__":
    main()
