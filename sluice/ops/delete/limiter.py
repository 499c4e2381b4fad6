"""Throttling of whole-batch deletes: the retry `Backoff` and the shared in-flight `Limiter`."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Retries of a batch that fails as a whole, and how the concurrency recovers."""

    attempts: int = 8
    base_seconds: float = 0.2
    max_seconds: float = 10.0
    restore_after: int = 4  # successful batches before one more worker is allowed again

    def delay(self, attempt: int) -> float:
        # Full jitter: throttled workers must not all come back in the same instant.
        cap = min(self.max_seconds, self.base_seconds * 2**attempt)
        return float(random.uniform(0.5, 1.0) * cap)


class Limiter:
    """How many batches may be in flight: halved on throttling, grown back on success.

    A throttle reported by a request that started before the latest cut does not cut again:
    every request in flight at that moment sees the same throttling, and one cut answers it.
    """

    def __init__(self, limit: int, restore_after: int) -> None:
        self.max = self.limit = self.lowest = limit
        self.restore_after = restore_after
        self._active = 0
        self._streak = 0
        self._epoch = 0
        self._cond = threading.Condition()

    def acquire(self) -> int:
        with self._cond:
            while self._active >= self.limit:
                self._cond.wait()
            self._active += 1
            return self._epoch

    def release(self) -> None:
        with self._cond:
            self._active -= 1
            self._cond.notify_all()

    def throttled(self, epoch: int) -> None:
        with self._cond:
            self._streak = 0
            if epoch == self._epoch and self.limit > 1:
                self.limit = max(1, self.limit // 2)
                self.lowest = min(self.lowest, self.limit)
                self._epoch += 1

    def succeeded(self) -> None:
        with self._cond:
            self._streak += 1
            if self._streak >= self.restore_after and self.limit < self.max:
                self.limit += 1
                self._streak = 0
                self._cond.notify_all()
