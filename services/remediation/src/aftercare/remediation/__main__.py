"""`python -m aftercare.remediation` (or `aftercare-remediation`): run the remediation service until SIGTERM."""

from __future__ import annotations

from aftercare.events.runtime import serve
from aftercare.remediation.bootstrap import build_app
from aftercare.remediation.settings import RemediationSettings


def main() -> None:
    settings = RemediationSettings()
    serve(build_app(settings), settings)


if __name__ == "__main__":
    main()
