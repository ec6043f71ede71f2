"""Hand-over between ROS callbacks and the tracking worker thread.

`LatestSlot` is a drop-oldest queue of depth 1: the subscription callback puts
every message in, the worker always takes the newest one, and each message
replaced before the worker took it counts as dropped. `WarningLimiter`
rate-limits warnings per kind. (The add/remove/reset requests wait in the tracking
session's own `tracking.session.RequestQueue`.)
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, Optional


class LatestSlot:
    """A single-slot queue that keeps only the newest item (see module docstring)."""

    def __init__(self):
        self._condition = threading.Condition()
        self._item: Any = None
        self._full = False
        self._closed = False
        self.received = 0
        self.dropped = 0

    def put(self, item: Any) -> bool:
        """Store `item`, replacing an unconsumed one; returns True when one was dropped."""
        with self._condition:
            dropped = self._full
            self.dropped += dropped
            self.received += 1
            self._item, self._full = item, True
            self._condition.notify()
            return dropped

    def get(self, timeout: Optional[float] = None) -> Any:
        """The newest item, waiting up to `timeout` s; None on timeout or after close()."""
        with self._condition:
            self._condition.wait_for(lambda: self._full or self._closed, timeout)
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    def close(self) -> None:
        """Wake the worker for good: get() returns None from now on once the slot is empty."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


class WarningLimiter:
    """Passes the first warning of each kind, then at most one per `period` s per kind.

    A passed warning says how many of its kind were held back since the last one.
    `counts` holds every warning seen, by kind (also the held-back ones).
    """

    def __init__(self, emit: Callable[[str], None], period: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        self._emit = emit
        self._period = period
        self._clock = clock
        self._lock = threading.Lock()
        self._last: Dict[str, float] = {}
        self._held: Dict[str, int] = {}
        self.counts: Dict[str, int] = {}

    def __call__(self, kind: str, message: str) -> bool:
        with self._lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            now = self._clock()
            last = self._last.get(kind)
            if last is not None and now - last < self._period:
                self._held[kind] = self._held.get(kind, 0) + 1
                return False
            held = self._held.pop(kind, 0)
            self._last[kind] = now
        if held:
            message += f" ({held} more like this in the last {now - last:.0f} s)"
        self._emit(message)
        return True
