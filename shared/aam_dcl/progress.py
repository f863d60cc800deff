"""Progress lines at INFO: counts of work, logged at most once per LOG_PROGRESS_INTERVAL_S.

The worker keeps one per stream and the bridge one per table of a run; each logs a line
only while work flows, so an idle pipeline stays quiet.
"""

from __future__ import annotations

import time
from collections import Counter


class Progress:
    """Counts added since the last line, and the totals; ``due()`` says when to log."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.window: Counter[str] = Counter()
        self.totals: Counter[str] = Counter()
        self.window_started = time.monotonic()

    def add(self, **counts: int) -> None:
        self.window.update(counts)
        self.totals.update(counts)

    def due(self, rate_of: str) -> dict[str, float | int] | None:
        """The window's counts, ``{rate_of}_per_s`` and the totals, once the interval has
        passed with some work in it (then a new window starts); else None."""
        now = time.monotonic()
        elapsed = now - self.window_started
        if elapsed < self.interval_s or not any(self.window.values()):
            return None
        line: dict[str, float | int] = dict(self.window)
        line[f"{rate_of}_per_s"] = round(self.window[rate_of] / elapsed, 1)
        line.update({f"total_{k}": v for k, v in self.totals.items()})
        self.window.clear()
        self.window_started = now
        return line
