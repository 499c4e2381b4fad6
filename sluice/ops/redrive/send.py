"""Sending a run's messages: batches of ten, paced, with backpressure, resumable.

A chunk's result file records how many of its sources were sent, and is written after the
batches it counts were confirmed (never before), so a resumed run skips exactly what is known
to be sent. An interruption that cannot write the result (a killed process) makes the resumed
run send part of a chunk again; the redrive ids written in the chunk make that harmless, since
the worker processes a redrive id once however many times it is delivered.

Backpressure (`max_queue_visible`): the sender keeps an upper bound of the queue's visible
count (the count last read plus what it sent since; workers only lower it) and reads the real
count only when a batch would take that bound past the limit. A batch is cut to the room left,
so with this sender the only producer the visible count stays at or below the limit. On SQS the
counts are approximate (they lag by up to a minute): the bound holds to that precision.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sluice.backends.queue.base import MAX_BATCH, OutgoingMessage, Queue
from sluice.layout import parse_uri
from sluice.messages import redrive_raw_file
from sluice.ops.redrive.model import OnEvent, Pacing, RedriveEvent, RedriveInterrupted, SendStats
from sluice.ops.redrive.runfiles import RunFiles

SEND_ATTEMPTS = 5  # for entries a batch reports failed (throttling): then the run stops


class Sender:
    def __init__(
        self,
        queue: Queue,
        files: RunFiles,
        pacing: Pacing,
        stats: SendStats,
        on_event: OnEvent | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.queue = queue
        self.files = files
        self.pacing = pacing
        self.stats = stats
        self.on_event = on_event
        self.sleep = sleep
        self.total = 0
        self._started = time.monotonic()
        self._visible_bound: int | None = None  # None: read the count before the next batch

    def _emit(self, kind: str, detail: str = "") -> None:
        if self.on_event is not None:
            done = self.stats.sent + self.stats.already_sent
            self.on_event(RedriveEvent(kind, done, self.total, detail=detail))

    def send_run(self, chunks: int) -> None:
        """Send every chunk not yet sent, in order.

        Raises:
            RedriveInterrupted: a send failed; what was confirmed is recorded.
        """
        for number in range(chunks):
            done = self.files.get_chunk("results", number) or {"sent": 0, "complete": False}
            if done.get("complete"):
                self.stats.already_sent += int(done["sent"])
                continue
            items = self.files.get_chunk("chunks", number)
            assert items is not None, f"chunk {number} of run {self.files.run_id} is missing"
            self.stats.already_sent += int(done["sent"])
            self._emit("sent")
            self.send_chunk(number, items["items"], int(done["sent"]))

    def send_chunk(self, number: int, items: list[Any], start: int) -> None:
        sent = start
        began = time.monotonic()
        try:
            while sent < len(items):
                room = self._room(min(MAX_BATCH, len(items) - sent))
                self._pace(room)
                batch = items[sent : sent + room]
                self._send(batch)
                sent += len(batch)
                self.stats.sent += len(batch)
                self.stats.batches += 1
                if self._visible_bound is not None:
                    self._visible_bound += len(batch)
                self._emit("sent")
        except BaseException as exc:
            self._record(number, sent, len(items))
            self.stats.seconds += time.monotonic() - began
            if isinstance(exc, Exception):
                reason = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                raise RedriveInterrupted(
                    f"redrive run {self.files.run_id} stopped while sending chunk {number}"
                    f" ({sent} of its {len(items)} sources sent): {reason}",
                    hint=f"sluice redrive --resume {self.files.run_id}   (sends the rest once)",
                    run_id=self.files.run_id,
                ) from exc
            raise
        self.stats.seconds += time.monotonic() - began
        self._record(number, sent, len(items))

    def _record(self, number: int, sent: int, size: int) -> None:
        self.files.put_chunk(
            "results",
            number,
            {"sent": sent, "complete": sent >= size, "at": datetime.now(UTC).isoformat()},
        )

    def _send(self, batch: list[Any]) -> None:
        """One send_batch, then the entries it reports failed again, with backoff."""
        entries = {}
        for i, (uri, redrive_id) in enumerate(batch):
            ref = parse_uri(uri)  # checked when the run was planned
            # The correlation id is the redrive id: a failure the ledger records for this
            # message (and `dlq inspect` shows) names the run and the source's place in it.
            message = redrive_raw_file(ref, redrive_id, correlation_id=redrive_id)
            entries[str(i)] = OutgoingMessage(message.body, message.attributes, entry_id=str(i))
        for attempt in range(SEND_ATTEMPTS):
            result = self.queue.send_batch(list(entries.values()))
            entries = {k: v for k, v in entries.items() if k in result.failed}
            if not entries:
                return
            if attempt + 1 < SEND_ATTEMPTS:
                self.sleep(min(0.1 * 2**attempt, 2.0))
        reasons = "; ".join(sorted(set(result.failed.values())))
        raise RedriveInterrupted(f"{len(entries)} message(s) not accepted by the queue: {reasons}")

    def _pace(self, count: int) -> None:
        if self.pacing.rate is None:
            return
        # Message k of the run may go at started + k / rate: the batch waits for its last one.
        due = self._started + (self.stats.sent + count - 1) / self.pacing.rate
        self.sleep(max(0.0, due - time.monotonic()))

    def _room(self, want: int) -> int:
        """How many messages the next batch may hold (waiting while the queue is full)."""
        if self.pacing.rate is not None:
            want = max(1, min(want, int(self.pacing.rate)))
        limit = self.pacing.max_queue_visible
        if limit is None:
            return want
        if self._visible_bound is not None and self._visible_bound + want <= limit:
            return want
        visible = self.queue.counts().visible
        paused_at: float | None = None
        while visible >= limit:
            if paused_at is None:
                paused_at = time.monotonic()
                self.stats.pauses += 1
                self._emit("paused", f"{visible} visible, limit {limit}")
            self.sleep(self.pacing.poll_seconds)
            visible = self.queue.counts().visible
            self._emit("paused", f"{visible} visible, limit {limit}")
        if paused_at is not None:
            paused = time.monotonic() - paused_at
            self.stats.paused_seconds += paused
            self._emit("resumed", f"{visible} visible after {paused:.1f}s")
            # The rate restarts after a pause: the time spent waiting is not owed messages.
            self._started += paused
        self._visible_bound = visible
        return min(want, limit - visible)
