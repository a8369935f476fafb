"""The demo customer system: a small HTTP service that can be broken on purpose and fixed through
admin endpoints, so diagnostics, runbooks and the closed-loop demo have something real to work on.

Run it with ``python -m aftercare.customer_system --port 8100``. See :mod:`.app` for its endpoints.
"""

from aftercare.customer_system.app import BreakMode, CustomerSystem, create_app

__all__ = ["BreakMode", "CustomerSystem", "create_app"]
