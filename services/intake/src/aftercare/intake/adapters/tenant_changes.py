"""Hear every tenant change on the tenants topic, in every intake instance.

Intake announces each change of a tenant (its profile, its active flag, its credentials) as
``TenantUpserted`` on the compacted tenants topic. Each instance caches credential lookups
(``CredentialCache``), so each instance must hear every change: this reader has no consumer
group (a group would split the topic's partitions between the instances), starts at the end of
the topic (an empty cache has nothing to forget) and commits nothing. It reads only the event
type and tenant headers, not the event.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from aiokafka import AIOKafkaConsumer

from aftercare.events.producer import HEADER_EVENT_TYPE, HEADER_TENANT_ID
from aftercare.events.tenants import TenantUpserted
from aftercare.events.topics import TENANTS
from aftercare.intake.adapters.tenant_registry import CredentialCache

log = structlog.stdlib.get_logger("aftercare.intake.tenant_changes")

RECONNECT_SECONDS = 5.0
ASSIGNMENT_SECONDS = 30.0


async def follow_tenant_changes(bootstrap_servers: str, cache: CredentialCache, *, topic: str = TENANTS) -> None:
    """Make ``cache`` forget each tenant whose TenantUpserted arrives from now on; runs until cancelled.

    The cache keeps nothing until this reader is positioned on every partition (a change it
    cannot hear must not leave a stale entry), and is emptied and stops keeping whenever the
    reader fails. While Kafka is unreachable no tenant change can be announced either; the
    cache's expiry bounds the rest.
    """
    while True:
        # Subscribed without a group: aiokafka assigns every partition of the topic to this reader.
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            client_id="intake-tenant-changes",
        )
        try:
            await consumer.start()
            deadline = asyncio.get_running_loop().time() + ASSIGNMENT_SECONDS
            while not consumer.assignment():
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(f"no partitions of {topic} assigned after {ASSIGNMENT_SECONDS} s")
                await asyncio.sleep(0.1)
            assigned = sorted(consumer.assignment())
            for partition in assigned:
                await consumer.position(partition)  # the end, resolved now: nothing from here on is missed
            cache.following = True
            log.info("following tenant changes", topic=topic, partitions=len(assigned))
            async for record in consumer:
                headers = {name: value for name, value in record.headers or ()}
                if headers.get(HEADER_EVENT_TYPE) == TenantUpserted.TYPE.encode():
                    tenant = headers.get(HEADER_TENANT_ID)
                    if tenant:
                        cache.forget_tenant(tenant.decode())
        except asyncio.CancelledError:
            raise
        except Exception as error:  # Kafka unreachable: keep nothing until heard again
            log.warning("tenant changes not heard; cache off until reconnected", error=str(error))
            await asyncio.sleep(RECONNECT_SECONDS)
        finally:
            cache.following = False
            cache.clear()
            with contextlib.suppress(Exception):
                await consumer.stop()
