"""The runs' outbox relay: a run's write knows exactly which outbox entries it added, so they are
published and pulled without reading the run back first (``OutboxRelay.flush_entries``: one
store round trip per flush, not two).
"""

from __future__ import annotations

from aftercare.events.outbox import OutboxRelay


class RunOutboxRelay(OutboxRelay):
    """The platform's relay; named for the runs, whose writes use ``flush_entries``."""
