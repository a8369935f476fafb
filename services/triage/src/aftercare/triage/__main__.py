"""`python -m aftercare.triage` (or `aftercare-triage`): run the triage service until SIGTERM;
`python -m aftercare.triage rebuild-groups`: rebuild the grouping state from Kafka (see
``entrypoints.cli``)."""

from __future__ import annotations

import sys

from aftercare.triage.entrypoints.cli import main

if __name__ == "__main__":
    sys.exit(main())
