"""Throttling: retry with backoff, and fewer calls at once while the backend pushes back.

Every chunk of a run calls the catalog (Glue: a few requests per second per account) or the
lake and query engine through one shared `Limiter`. A throttled call (`BackendBusy`, or any
other `TransientError`) halves the number of calls allowed at once (down to one) and is
retried after an exponential backoff with jitter; calls already in flight finish, new ones wait
for a slot. Each call that succeeds once no throttle was seen for `calm_seconds` gives back one
slot, up to the run's `--max-concurrency` (additive increase, multiplicative decrease, as TCP
and the AWS SDKs' adaptive retry mode do).

A slot is released during the backoff sleep, so a throttled call never holds up the others.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from sluice.errors import TransientError

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    attempts: int = 6  # calls in all, the first one included
    base_seconds: float = 0.5
    max_seconds: float = 20.0
    calm_seconds: float = 5.0  # without a throttle, before concurrency grows again

    def delay(self, attempt: int) -> float:
        """Full jitter: spreads the retries of calls throttled together."""
        ceiling = min(self.max_seconds, self.base_seconds * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


class Limiter:
    """A semaphore whose size drops on throttling and grows back when it stops."""

    def __init__(self, max_concurrency: int, backoff: Backoff | None = None) -> None:
        self.max_concurrency = max_concurrency
        self.backoff = backoff or Backoff()
        self._limit = max_concurrency
        self._active = 0
        self._last_throttle = float("-inf")
        self._cond = threading.Condition()
        self.throttles = 0  # throttled calls seen
        self.lowest = max_concurrency  # the lowest limit the run fell to

    @property
    def limit(self) -> int:
        with self._cond:
            return self._limit

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: self._active < self._limit)
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def throttled(self) -> None:
        with self._cond:
            self.throttles += 1
            self._last_throttle = time.monotonic()
            self._limit = max(1, self._limit // 2)
            self.lowest = min(self.lowest, self._limit)

    def succeeded(self) -> None:
        with self._cond:
            calm = time.monotonic() - self._last_throttle >= self.backoff.calm_seconds
            if calm and self._limit < self.max_concurrency:
                self._limit += 1
                self._cond.notify_all()

    def call(self, fn: Callable[[], T], on_attempt: Callable[[], None] | None = None) -> T:
        """`fn()` in a slot, retried on `TransientError` with backoff.

        Raises:
            TransientError: still throttled after `backoff.attempts` calls (the last error).
            Anything else `fn` raises, at once.
        """
        for attempt in range(1, self.backoff.attempts + 1):
            if on_attempt is not None:
                on_attempt()
            with self.slot():
                try:
                    value = fn()
                except TransientError:
                    # Lowered before the slot is given back, so no call takes the slot meanwhile.
                    self.throttled()
                    if attempt == self.backoff.attempts:
                        raise
                else:
                    self.succeeded()
                    return value
            time.sleep(self.backoff.delay(attempt))
        raise AssertionError("unreachable")  # pragma: no cover
