"""The run of one delete: producer and worker threads, batch retries, the failed-keys file."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from sluice.env import Env
from sluice.errors import ConfigError, TerminalError, TransientError
from sluice.layout import VERIFIED_PREFIX
from sluice.ops.delete.limiter import Backoff, Limiter
from sluice.ops.delete.model import SAMPLE_SIZE, DeleteProgress, DeleteResult, OnProgress
from sluice.ops.delete.sources import FOOTER_READERS, SourceCheck

_PROGRESS_EVERY = 0.2  # seconds between progress callbacks


def default_failed_keys_file() -> Path:
    return Path(f"sluice-delete-failed-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.jsonl")


def file_keys(path: Path, bucket: str, *, check_only: bool = False) -> Iterator[str]:
    """The keys of a failed-keys file, one JSON object a line (blank lines skipped)."""
    with path.open(encoding="utf-8") as f:
        for number, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                entry = json.loads(text)
                entry_bucket, key = entry["bucket"], entry["key"]
            except (ValueError, KeyError, TypeError):
                raise ConfigError(
                    f"{path}:{number}: not a failed-keys line",
                    hint='each line is {"bucket": …, "key": …, "error": …}, as sluice delete '
                    "writes it",
                ) from None
            if entry_bucket != bucket or not str(key).startswith(VERIFIED_PREFIX):
                raise ConfigError(
                    f"{path}:{number}: s3://{entry_bucket}/{key} is outside the verified files"
                    f" (s3://{bucket}/{VERIFIED_PREFIX})",
                    hint="a failed-keys file of another environment? pass --env",
                )
            if not check_only:
                yield str(key)


class DeleteRun:
    """The shared state of one delete: counters, caches, the limiter, the failed-keys file.

    One producer lists (or reads the file) a page at a time and hands batches of up to 1000 keys
    to `workers` threads through a bounded queue, so memory is bounded whatever the count: at
    most `2 * workers` batches wait, and no full key list is ever built. Each worker:

    1. checks the batch against promise 1 (see `SourceCheck`), unless `check_sources` is False;
    2. deletes the rest with one `delete_batch`. A batch throttled or failing transiently as a
       whole is retried with backoff, and the shared `Limiter` halves the number of batches in
       flight while throttling lasts, then restores it one step at a time;
    3. writes every key it could not delete (per-key errors, refusals, exhausted retries) to the
       failed-keys file (JSONL: bucket, key, error), which `from_file` takes to finish the job.
    """

    def __init__(
        self,
        env: Env,
        result: DeleteResult,
        *,
        batch_size: int,
        backoff: Backoff,
        failed_keys_file: Path,
        check_sources: bool,
    ) -> None:
        self.env = env
        self.store = env.store
        self.result = result
        self.batch_size = batch_size
        self.backoff = backoff
        self.limiter = Limiter(result.workers, backoff.restore_after)
        self.check_sources = check_sources
        self.failed_path = failed_keys_file
        self.batches: queue.Queue[list[str] | None] = queue.Queue(maxsize=2 * result.workers)
        self.stop = threading.Event()
        self.crash: BaseException | None = None
        self._lock = threading.Lock()
        self._failed_file: IO[str] | None = None
        self.sources = SourceCheck(self.store, result, self._lock)

    # -- producer ------------------------------------------------------------------------

    def produce(self, keys: Iterator[str]) -> None:
        batch: list[str] = []
        try:
            for key in keys:
                if self.stop.is_set():
                    return
                with self._lock:
                    self.result.listed += 1
                    if len(self.result.sample) < SAMPLE_SIZE:
                        self.result.sample.append(key)
                batch.append(key)
                if len(batch) >= self.batch_size:
                    self._hand_over(batch)
                    batch = []
            if batch:
                self._hand_over(batch)
        except BaseException as exc:
            self._abort(exc)
        finally:
            for _ in range(self.result.workers):
                self.batches.put(None)

    def _hand_over(self, batch: list[str]) -> None:
        # A bounded put that gives up when the workers stopped (they would never take it).
        while not self.stop.is_set():
            try:
                self.batches.put(batch, timeout=0.1)
                return
            except queue.Full:
                continue

    def _abort(self, exc: BaseException) -> None:
        with self._lock:
            if self.crash is None:
                self.crash = exc
        self.stop.set()

    # -- workers -------------------------------------------------------------------------

    def work(self) -> None:
        try:
            while (batch := self.batches.get()) is not None:
                if not self.stop.is_set():
                    self._process(batch)
        except BaseException as exc:
            self._abort(exc)
            while self.batches.get() is not None:
                pass  # drain, so the producer's final sentinels find room

    def _process(self, batch: list[str]) -> None:
        bucket = self.result.bucket
        keep, refused, errors = self.sources.check(batch) if self.check_sources else (batch, {}, {})
        with self._lock:
            self.result.refused += len(refused)
        self._record_failures(refused)
        self._record_failures(errors)
        if self.result.dry_run:
            with self._lock:
                self.result.would_delete += len(keep)
                self.result.failed += len(errors)
            return
        if keep:
            errors = self._delete(bucket, keep)
            self._record_failures(errors)
            with self._lock:
                self.result.deleted += len(keep) - len(errors)
        with self._lock:
            self.result.failed += len(errors)

    def _delete(self, bucket: str, keys: list[str]) -> dict[str, str]:
        """Delete one batch; returns the keys not deleted and why."""
        for attempt in range(self.backoff.attempts):
            epoch = self.limiter.acquire()
            try:
                answer = self.store.delete_batch(bucket, keys)
            except TransientError as exc:  # BackendBusy (SlowDown) included
                self.limiter.throttled(epoch)
                if attempt + 1 == self.backoff.attempts:
                    return dict.fromkeys(keys, f"{exc.error_class}: {exc.message}")
                with self._lock:
                    self.result.retries += 1
            except TerminalError as exc:
                # The same request fails the same way for every batch (access denied, no such
                # bucket): stop the run rather than fail every key one batch at a time.
                self._abort(exc)
                return dict.fromkeys(keys, f"{exc.error_class}: {exc.message}")
            else:
                self.limiter.succeeded()
                return dict(answer.errors)
            finally:
                self.limiter.release()
            time.sleep(self.backoff.delay(attempt))
        return dict.fromkeys(keys, "not attempted")  # attempts < 1; Backoff forbids it in use

    def _record_failures(self, errors: dict[str, str]) -> None:
        if not errors or self.result.dry_run:
            return
        lines = "".join(
            json.dumps({"bucket": self.result.bucket, "key": k, "error": e}) + "\n"
            for k, e in errors.items()
        )
        with self._lock:
            if self._failed_file is None:
                self._failed_file = self.failed_path.open("w", encoding="utf-8")
                self.result.failed_keys_file = str(self.failed_path)
            self._failed_file.write(lines)
            self._failed_file.flush()

    # -- the whole run -------------------------------------------------------------------

    def run(self, keys: Iterator[str], on_progress: OnProgress | None) -> None:
        threads = [threading.Thread(target=self.produce, args=(keys,), daemon=True)]
        threads += [
            threading.Thread(target=self.work, daemon=True) for _ in range(self.result.workers)
        ]
        with ThreadPoolExecutor(FOOTER_READERS, thread_name_prefix="footer") as footers:
            self.sources.footers = footers
            try:
                for thread in threads:
                    thread.start()
                while alive := [t for t in threads if t.is_alive()]:
                    alive[0].join(_PROGRESS_EVERY)
                    if on_progress is not None:
                        on_progress(self.progress())
            except BaseException:
                self.stop.set()  # Ctrl-C: finish the batches in flight, start no other
                for thread in threads:
                    thread.join()
                raise
            finally:
                if self._failed_file is not None:
                    self._failed_file.close()
        if on_progress is not None:
            on_progress(self.progress())

    def progress(self) -> DeleteProgress:
        r = self.result
        return DeleteProgress(r.listed, r.deleted, r.refused, r.failed, self.limiter.limit)
