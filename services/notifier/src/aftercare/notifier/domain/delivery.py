"""A delivery's life: states, retries as stored due times, and the crash-window policy.

States::

    pending ──claim──> sending ──relay accepted──> sent
       ^                  │ relay refused (temporary)   -> retrying (due later) -> ... -> failed
       └── retrying <─────┘ relay refused (permanent)   -> failed
    held (quiet hours / throttled) and digest are pending with a later due time.

The crash window (documented in the notifier's README section and proven by a SIGKILL test):
a delivery is claimed (``sending``) only at the *point of no return* — for email after the relay
accepted sender and recipients, right before the message data goes; for SMS right before the
request. A process that dies before that point leaves it ``pending``: it is sent later, once.
One that dies after it leaves ``sending``; when the claim's lease runs out the delivery becomes

* **email / SMS** — ``unconfirmed``: not sent again automatically, because the relay may already
  have it and a customer must never get the same message twice. It is visible on the dashboard
  and in the incident's notification log, and an operator may resend it; a resent email keeps
  its Message-ID (derived from the delivery key), so mail clients recognise and merge the copy.
* **webhook** — sent again with the same ``webhook-id``: Standard Webhooks receivers deduplicate
  on it, so at-least-once with one id is exactly-once for the customer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from aftercare.events.tenants import NotificationChannel
from aftercare.notifier.domain.notices import received_notice_id
from aftercare.notifier.domain.preferences import delivery_key


class DeliveryState(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    RETRYING = "retrying"
    FAILED = "failed"
    UNCONFIRMED = "unconfirmed"
    DIGESTED = "digested"  # went out inside a digest message


DUE_STATES = (DeliveryState.PENDING, DeliveryState.RETRYING)
FINAL_STATES = (DeliveryState.SENT, DeliveryState.FAILED, DeliveryState.UNCONFIRMED, DeliveryState.DIGESTED)


class SendError(Exception):
    """A channel could not deliver. ``permanent`` failures (a mailbox that does not exist, a 4xx
    from a webhook other than 408/429) are not retried."""

    def __init__(self, detail: str, *, permanent: bool = False, ambiguous: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.permanent = permanent
        # The failure came after the point of no return without an answer: it may have arrived.
        self.ambiguous = ambiguous


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    initial: timedelta = timedelta(seconds=30)
    maximum: timedelta = timedelta(hours=1)
    multiplier: float = 2.0

    def next_attempt(self, attempts_made: int, now: datetime) -> datetime | None:
        """When to try again after ``attempts_made`` failed attempts; None when out of attempts."""
        if attempts_made >= self.max_attempts:
            return None
        delay = min(self.maximum.total_seconds(), self.initial.total_seconds() * self.multiplier ** (attempts_made - 1))
        return now + timedelta(seconds=delay)


@dataclass(frozen=True)
class Outcome:
    state: DeliveryState
    due_at: datetime | None
    will_retry: bool


def after_failure(error: SendError, attempts_made: int, now: datetime, policy: RetryPolicy) -> Outcome:
    """What a failed attempt leaves: another attempt at a stored due time, or the failed state."""
    next_at = None if error.permanent else policy.next_attempt(attempts_made, now)
    if next_at is None:
        return Outcome(DeliveryState.FAILED, None, False)
    return Outcome(DeliveryState.RETRYING, next_at, True)


def after_lost_claim(channel: NotificationChannel) -> DeliveryState:
    """A claim whose process died at or after the point of no return (see module doc)."""
    if channel is NotificationChannel.WEBHOOK:
        return DeliveryState.PENDING
    return DeliveryState.UNCONFIRMED


def message_id(key: str, domain: str) -> str:
    """The email Message-ID of a delivery: the same key always gives the same id, so a copy
    sent again after a crash is recognisable as the same message."""
    return f"<{key}@{domain}>"


def thread_root_id(incident_id: str, recipient: str, domain: str) -> str:
    """The Message-ID every email about one incident to one address refers to (its first message,
    'received'), so the customer's mail client shows one conversation."""
    return message_id(delivery_key(received_notice_id(incident_id), recipient, NotificationChannel.EMAIL), domain)
