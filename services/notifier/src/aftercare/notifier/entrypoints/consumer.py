"""The events notifier reacts to, and which handler does what with each."""

from __future__ import annotations

from aftercare.events import topics
from aftercare.events.consumer import Handler, HandlerTable
from aftercare.events.envelope import Event
from aftercare.events.incidents import (
    IncidentAcknowledged,
    IncidentClosed,
    IncidentReopened,
    IncidentReported,
    IncidentResolved,
    IncidentUpdated,
)
from aftercare.events.notifications import NotificationFailed, NotificationRequested, NotificationSent
from aftercare.events.remediation import (
    ApprovalGranted,
    ApprovalRejected,
    ApprovalRequested,
    IncidentEscalated,
    RemediationFailed,
    RemediationStarted,
    RemediationStepCompleted,
    RemediationSucceeded,
)
from aftercare.events.tenants import TenantUpserted
from aftercare.events.triage import DiagnosisCompleted, IncidentGrouped, IncidentTriaged, TargetProbed
from aftercare.notifier.components import NotifierComponents

CONSUMER_GROUP = "notifier"
TOPICS = [topics.TENANTS, topics.INCIDENTS, topics.TRIAGE, topics.REMEDIATION, topics.NOTIFICATIONS]
DASHBOARD_TOPICS = [topics.INCIDENTS, topics.TRIAGE, topics.REMEDIATION, topics.NOTIFICATIONS]

# Events a customer may hear about: the read model learns them, then notices are planned.
CUSTOMER_FACING: tuple[type[Event], ...] = (
    IncidentReported,
    IncidentResolved,
    IncidentTriaged,
    IncidentGrouped,
    DiagnosisCompleted,
    RemediationStarted,
    IncidentEscalated,
    NotificationRequested,
)
# Events only the dashboard shows.
DASHBOARD_ONLY: tuple[type[Event], ...] = (
    IncidentUpdated,
    IncidentAcknowledged,
    IncidentReopened,
    IncidentClosed,
    RemediationStepCompleted,
    ApprovalRequested,
    ApprovalGranted,
    ApprovalRejected,
    RemediationSucceeded,
    RemediationFailed,
    NotificationSent,
    NotificationFailed,
)


def handlers(notifier: NotifierComponents) -> HandlerTable:
    table: dict[type[Event], list[Handler]] = {TenantUpserted: [notifier.planner.on_tenant]}
    for model in CUSTOMER_FACING:
        table[model] = [notifier.planner.on_event]
    for model in DASHBOARD_ONLY:
        table[model] = [notifier.planner.on_read_model_only]
    # Scheduled diagnostics' probes: the dashboard's latency sparkline per target.
    table[TargetProbed] = [notifier.target_latencies.on_target_probed]
    return table
