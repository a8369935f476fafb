"""`python -m aftercare.notifier` (or `aftercare-notifier`): run the notifier service until SIGTERM."""

from __future__ import annotations

from aftercare.events.runtime import serve
from aftercare.notifier.bootstrap import build_app
from aftercare.notifier.settings import NotifierSettings


def main() -> None:
    settings = NotifierSettings()
    serve(build_app(settings), settings)


if __name__ == "__main__":
    main()
