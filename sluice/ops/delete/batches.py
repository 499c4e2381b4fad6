"""The run of one delete: lister and worker threads, batch retries, the failed-keys file."""

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
from sluice.ops.delete.model import SAMPLE_SIZE, DeleteProgress, DeleteResult, Entry, OnProgress
from sluice.ops.delete.sources import SourceCheck

LISTERS = 4  # listings (one per target prefix) read at once
_PROGRESS_EVERY = 0.2  # seconds between progress callbacks


def default_failed_keys_file() -> Path:
    return Path(f"sluice-delete-failed-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.jsonl")


def file_entries(path: Path, bucket: str) -> Iterator[Entry]:
    """The entries of a failed-keys file, one JSON object a line (blank lines skipped): a key,
    and the version id and delete-marker flag of a version (files of `--all-versions`).

    Raises:
        ConfigError: a line that is not a failed-keys line, or names a key outside the verified
            files of `bucket`.
    """
    with path.open(encoding="utf-8") as f:
        for number, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
                line_bucket, key = line["bucket"], line["key"]
                version_id = line.get("version_id")
                if not isinstance(key, str) or not isinstance(version_id, str | None):
                    raise TypeError
            except (ValueError, KeyError, TypeError, AttributeError):
                raise ConfigError(
                    f"{path}:{number}: not a failed-keys line",
                    hint='each line is {"bucket": …, "key": …, "error": …} (and "version_id" '
                    "with --all-versions), as sluice delete writes it",
                ) from None
            if line_bucket != bucket or not key.startswith(VERIFIED_PREFIX):
                raise ConfigError(
                    f"{path}:{number}: s3://{line_bucket}/{key} is outside the verified files"
                    f" (s3://{bucket}/{VERIFIED_PREFIX})",
                    hint="a failed-keys file of another environment? pass --env",
                )
            yield Entry(key, version_id, bool(line.get("delete_marker")))


class DeleteRun:
    """The shared state of one delete: counters, the source check, the limiter, the failed-keys
    file.

    Listers (one per listing, `LISTERS` at once) read the listings a page at a time and hand
    batches of up to 1000 entries to `workers` threads through a bounded queue, so memory is
    bounded whatever the count: at most `2 * workers` batches wait, and no full key list is ever
    built. A key's versions and delete markers stay in one batch (unless they are more than a
    batch), so that the source check sees them together. Each worker:

    1. checks the batch against promise 1 (see `SourceCheck`), unless `check_sources` is False;
       a delete marker stays when a version of its key stays (deleting it would make that
       version current again);
    2. deletes the rest with one `delete_versions`. A batch throttled or failing transiently as
       a whole is retried with backoff, and the shared `Limiter` halves the number of batches in
       flight while throttling lasts, then restores it one step at a time;
    3. writes every entry it could not delete (per-key errors, refusals, exhausted retries) to
       the failed-keys file (JSONL: bucket, key, the version id and delete-marker flag of a
       version, error), which `from_file` takes to finish the job.
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
        self.batches: queue.Queue[list[Entry] | None] = queue.Queue(maxsize=2 * result.workers)
        self.stop = threading.Event()
        self.crash: BaseException | None = None
        self._lock = threading.Lock()
        self._failed_file: IO[str] | None = None
        self.sources = SourceCheck(self.store, result, self._lock)

    # -- listers -------------------------------------------------------------------------

    def produce(self, listings: list[Iterator[Entry]]) -> None:
        try:
            workers = min(LISTERS, len(listings)) or 1
            with ThreadPoolExecutor(workers, thread_name_prefix="lister") as listers:
                for done in [listers.submit(self._list, entries) for entries in listings]:
                    done.result()
        finally:
            for _ in range(self.result.workers):
                self.batches.put(None)

    def _list(self, entries: Iterator[Entry]) -> None:
        batch: list[Entry] = []
        try:
            for entry in entries:
                if self.stop.is_set():
                    return
                self._count(entry)
                batch.append(entry)
                if len(batch) >= self.batch_size:
                    batch = self._cut(batch)
            if batch:
                self._hand_over(batch)
        except BaseException as exc:
            self._abort(exc)

    def _count(self, entry: Entry) -> None:
        r = self.result
        with self._lock:
            r.listed += 1
            if entry.version_id is not None:
                r.delete_markers += entry.delete_marker
                r.versions += not entry.delete_marker
            if len(r.sample) < SAMPLE_SIZE and entry.key not in r.sample:
                r.sample.append(entry.key)

    def _cut(self, batch: list[Entry]) -> list[Entry]:
        """Hand a full batch over at once, less the entries of its last key when they are
        versions (more may follow on the next page) and other keys remain; returns the entries
        that start the next batch."""
        end = len(batch)
        if batch[-1].version_id is not None:
            while end > 0 and batch[end - 1].key == batch[-1].key:
                end -= 1
        end = end or len(batch)
        self._hand_over(batch[:end])
        return batch[end:]

    def _hand_over(self, batch: list[Entry]) -> None:
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

    def _process(self, batch: list[Entry]) -> None:
        refused, errors = self._check(batch) if self.check_sources else ({}, {})
        keep = [e for e in batch if e not in refused and e not in errors]
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
            errors = self._delete(keep)
            self._record_failures(errors)
            with self._lock:
                self.result.deleted += len(keep) - len(errors)
        with self._lock:
            self.result.failed += len(errors)

    def _check(self, batch: list[Entry]) -> tuple[dict[Entry, str], dict[Entry, str]]:
        """The entries refused and those whose check failed, each with why. A delete marker
        shares the fate of the versions of its key in the batch."""
        files = {e.ref: e for e in batch if not e.delete_marker}
        refused_files, failed_files = self.sources.check(files)
        refused = {files[ref]: why for ref, why in refused_files.items()}
        errors = {files[ref]: why for ref, why in failed_files.items()}
        held = {e.key: (refused, why) for e, why in refused.items()}
        held |= {e.key: (errors, why) for e, why in errors.items()}
        for entry in batch:
            if entry.delete_marker and entry.key in held:
                verdicts, why = held[entry.key]
                verdicts[entry] = why
        return refused, errors

    def _delete(self, entries: list[Entry]) -> dict[Entry, str]:
        """Delete one batch; returns the entries not deleted and why."""
        refs = {e.ref: e for e in entries}
        for attempt in range(self.backoff.attempts):
            epoch = self.limiter.acquire()
            try:
                answer = self.store.delete_versions(self.result.bucket, list(refs))
            except TransientError as exc:  # BackendBusy (SlowDown) included
                self.limiter.throttled(epoch)
                if attempt + 1 == self.backoff.attempts:
                    return dict.fromkeys(entries, f"{exc.error_class}: {exc.message}")
                with self._lock:
                    self.result.retries += 1
            except TerminalError as exc:
                # The same request fails the same way for every batch (access denied, no such
                # bucket): stop the run rather than fail every key one batch at a time.
                self._abort(exc)
                return dict.fromkeys(entries, f"{exc.error_class}: {exc.message}")
            else:
                self.limiter.succeeded()
                return {refs[ref]: why for ref, why in answer.errors.items()}
            finally:
                self.limiter.release()
            time.sleep(self.backoff.delay(attempt))
        return dict.fromkeys(entries, "not attempted")  # attempts < 1; Backoff forbids it in use

    def _record_failures(self, errors: dict[Entry, str]) -> None:
        if not errors or self.result.dry_run:
            return
        lines = "".join(json.dumps(self._line(e, why)) + "\n" for e, why in errors.items())
        with self._lock:
            if self._failed_file is None:
                self._failed_file = self.failed_path.open("w", encoding="utf-8")
                self.result.failed_keys_file = str(self.failed_path)
            self._failed_file.write(lines)
            self._failed_file.flush()

    def _line(self, entry: Entry, error: str) -> dict[str, object]:
        line: dict[str, object] = {"bucket": self.result.bucket, "key": entry.key}
        if entry.version_id is not None:
            line |= {"version_id": entry.version_id, "delete_marker": entry.delete_marker}
        return line | {"error": error}

    # -- the whole run -------------------------------------------------------------------

    def run(self, listings: list[Iterator[Entry]], on_progress: OnProgress | None) -> None:
        threads = [threading.Thread(target=self.produce, args=(listings,), daemon=True)]
        threads += [
            threading.Thread(target=self.work, daemon=True) for _ in range(self.result.workers)
        ]
        with self.sources:
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
