"""The system clock, the production implementation of `orchestrator.ports.Clock`."""

from __future__ import annotations

import time
from datetime import UTC, datetime


class SystemClock:
    """Timezone-aware UTC wall time and the monotonic clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()
