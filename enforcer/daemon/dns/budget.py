"""How many DNS denials a sandbox may report a second: the forwarder's share
of the event budget (`--events-per-sec`) the kernel applies to its own events.
What it holds back is counted as suppressed, never silently dropped."""

from __future__ import annotations


class EventBudget:
    def __init__(self, per_sec: int) -> None:
        self._per_sec = per_sec  # 0: no limit
        self._window_ns = 0
        self._count = 0

    def take(self, now_ns: int) -> bool:
        """True if one more report fits in the current second."""
        if not self._per_sec:
            return True
        if now_ns - self._window_ns >= 1_000_000_000:
            self._window_ns, self._count = now_ns, 0
        if self._count >= self._per_sec:
            return False
        self._count += 1
        return True
