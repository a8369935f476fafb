"""`python -m aftercare.triage` (or `aftercare-triage`): run the triage service until SIGTERM."""

from __future__ import annotations

from aftercare.events.runtime import serve
from aftercare.triage.bootstrap import build_app
from aftercare.triage.settings import TriageSettings


def main() -> None:
    settings = TriageSettings()
    serve(build_app(settings), settings)


if __name__ == "__main__":
    main()
