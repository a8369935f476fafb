"""`python -m aftercare.intake` (or `aftercare-intake`): run the intake service until SIGTERM."""

from __future__ import annotations

from aftercare.events.runtime import serve
from aftercare.intake.bootstrap import build_app
from aftercare.intake.settings import IntakeSettings


def main() -> None:
    settings = IntakeSettings()
    serve(build_app(settings), settings)


if __name__ == "__main__":
    main()
