"""(being built)"""

from __future__ import annotations

from aftercare.intake.components import IntakeComponents


class InboundEmailServer:
    def __init__(self, intake: IntakeComponents) -> None:
        self._intake = intake

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None
