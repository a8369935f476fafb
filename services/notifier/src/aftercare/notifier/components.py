"""Everything the notifier's entrypoints use, built once the store and Kafka are connected."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

import httpx

from aftercare.events.operators import OperatorDirectory
from aftercare.events.outbox import OutboxRelay
from aftercare.events.runtime import ServiceRuntime
from aftercare.events.schedule import Leases
from aftercare.events.tenant_copy import TenantCopy
from aftercare.events.tenants import NotificationChannel
from aftercare.notifier.adapters.chat import ChatSender
from aftercare.notifier.adapters.live_feed import LiveFeed
from aftercare.notifier.adapters.read_model import IncidentReadModel
from aftercare.notifier.adapters.sms import SmsSender
from aftercare.notifier.adapters.smtp import EmailRelay, EmailSender, SmtpSettings
from aftercare.notifier.adapters.store import DeliveryLease, Store
from aftercare.notifier.adapters.target_latency import TargetLatencies
from aftercare.notifier.adapters.templates import MessageTemplates
from aftercare.notifier.adapters.webhook import WebhookSender
from aftercare.notifier.domain.delivery import RetryPolicy
from aftercare.notifier.service_layer.deliver import ChannelSender, DeliveryWorker
from aftercare.notifier.service_layer.digest import Digests
from aftercare.notifier.service_layer.notify import NotificationPlanner
from aftercare.notifier.settings import NotifierSettings


@dataclass
class NotifierComponents:
    settings: NotifierSettings
    store: Store
    tenants: TenantCopy
    templates: MessageTemplates
    read_model: IncidentReadModel
    planner: NotificationPlanner
    worker: DeliveryWorker
    digests: Digests
    delivery_lease: DeliveryLease
    relay: OutboxRelay
    email: EmailRelay
    http: httpx.AsyncClient
    wake: asyncio.Event
    live: LiveFeed
    operators: OperatorDirectory | None
    target_latencies: TargetLatencies

    @classmethod
    def build(
        cls, runtime: ServiceRuntime, settings: NotifierSettings, templates: MessageTemplates
    ) -> NotifierComponents:
        store = Store(runtime.db)
        tenants = TenantCopy(runtime.db)
        wake = asyncio.Event()
        read_model = IncidentReadModel(store.incidents)
        live = LiveFeed()
        read_model.listeners.append(live.publish)
        relay = OutboxRelay(runtime.require_producer())
        http = httpx.AsyncClient(timeout=settings.webhook_timeout_seconds, follow_redirects=False)
        email = EmailRelay(
            SmtpSettings(
                host=settings.smtp_host,
                port=settings.smtp_port,
                use_tls=settings.smtp_tls,
                starttls=settings.smtp_starttls,
                username=settings.smtp_username,
                password=settings.smtp_password,
                timeout_s=settings.smtp_timeout_seconds,
                validate_certs=settings.smtp_validate_certs,
            ),
            connections=settings.smtp_connections,
        )
        senders: dict[NotificationChannel, ChannelSender] = {
            NotificationChannel.EMAIL: EmailSender(email, settings.mail_from, settings.message_id_domain),
            NotificationChannel.WEBHOOK: WebhookSender(store, http),
            NotificationChannel.CHAT: ChatSender(http, settings.public_base_url),
        }
        if settings.twilio_account_sid:
            senders[NotificationChannel.SMS] = SmsSender(
                store,
                http,
                base_url=settings.sms_base_url,
                account_sid=settings.twilio_account_sid,
                auth_token=settings.twilio_auth_token,
                sender=settings.sms_from,
                status_callback_base=settings.public_base_url,
            )
        worker = DeliveryWorker(
            store,
            tenants,
            templates,
            senders,
            relay,
            RetryPolicy(
                max_attempts=settings.max_attempts,
                initial=timedelta(seconds=settings.retry_initial_seconds),
                maximum=timedelta(seconds=settings.retry_max_seconds),
            ),
            timedelta(seconds=settings.sending_lease_seconds),
            concurrency=settings.delivery_concurrency,
        )
        return cls(
            settings=settings,
            store=store,
            tenants=tenants,
            templates=templates,
            read_model=read_model,
            planner=NotificationPlanner(
                store, tenants, read_model, settings, wake, runtime.due_times, hand_over=worker.hand_over
            ),
            worker=worker,
            digests=Digests(store, tenants, templates, senders),
            # The period the notifier's own lease had: a restarted notifier takes over as soon.
            delivery_lease=DeliveryLease(
                Leases(
                    runtime.db,
                    runtime.holder_id,
                    period=timedelta(seconds=max(10.0, settings.delivery_poll_seconds * 10)),
                )
            ),
            relay=relay,
            email=email,
            http=http,
            wake=wake,
            live=live,
            operators=runtime.operators,
            target_latencies=TargetLatencies(store.target_latency),
        )

    async def close(self) -> None:
        await self.email.close()
        await self.http.aclose()
        await self.delivery_lease.release()
