"""Bulk delete of verified files: by table (and day), by prefix, or from a failed-keys file.

One producer lists (or reads the file) a page at a time and hands batches of up to 1000 keys
to `workers` threads through a bounded queue, so memory is bounded whatever the count: at most
`2 * workers` batches wait, and no full key list is ever built. Each worker:

1. checks the batch against promise 1 (a verified file is deleted only if its source raw object
   exists, so it can be rebuilt): the source is read from the file's Parquet footer
   (`sluice.source_ref`), each distinct source is checked once per run with a `head`, and a
   file whose name is the hash of a source already read needs no footer read at all (the name
   is a pure function of the source). Files whose source is gone, or that record none, are
   refused unless `allow_missing_sources`;
2. deletes the rest with one `delete_batch`. A batch throttled or failing transiently as a whole
   is retried with backoff, and the shared `Limiter` halves the number of batches in flight
   while throttling lasts, then restores it one step at a time;
3. writes every key it could not delete (per-key errors, refusals, exhausted retries) to the
   failed-keys file (JSONL: bucket, key, error), which `from_file` takes to finish the job.

An interrupted delete resumes by running it again: what was deleted is no longer listed.
"""

from __future__ import annotations

import json
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pyarrow.parquet as pq

from sluice.backends.store.base import MAX_DELETE_BATCH
from sluice.env import Env
from sluice.errors import ConfigError, ObjectNotFound, SluiceError, TerminalError, TransientError
from sluice.layout import (
    ALL_TYPES,
    VERIFIED_PREFIX,
    parse_uri,
    parse_verified_key,
    partition_prefix,
    source_hash,
    table_prefix,
)
from sluice.ops.guard import confirm_destructive
from sluice.ops.queues import command_prefix

DEFAULT_WORKERS = 8
SAMPLE_SIZE = 10
SOURCE_REF_METADATA = b"sluice.source_ref"
FOOTER_READERS = 16  # footers are small ranged reads: latency-bound, so more than the workers
_PROGRESS_EVERY = 0.2  # seconds between progress callbacks


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


@dataclass(frozen=True)
class DeleteProgress:
    listed: int
    deleted: int
    refused: int
    failed: int
    workers: int  # batches allowed in flight now (lower while throttled)


@dataclass
class DeleteResult:
    target: str
    bucket: str
    prefixes: list[str]
    from_file: str | None
    dry_run: bool
    workers: int
    sources_checked: bool  # False with allow_missing_sources: no footer was read
    listed: int = 0
    deleted: int = 0
    would_delete: int = 0  # dry run: listed minus refused
    refused: int = 0  # files whose source raw object is gone (or unknown)
    failed: int = 0  # keys not deleted for any other reason
    missing_sources: list[str] = field(default_factory=list)  # a sample
    missing_source_count: int = 0
    sample: list[str] = field(default_factory=list)  # the first keys listed
    failed_keys_file: str | None = None  # written only when a key was refused or failed
    retries: int = 0  # whole-batch retries (throttling, transient errors)
    lowest_workers: int = 0
    aborted: str | None = None  # why the run stopped early (a terminal error of a whole batch)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.refused == 0 and self.aborted is None


OnProgress = Callable[[DeleteProgress], None]


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


def _name(key: str) -> str:
    return key.rsplit("/", 1)[-1].removesuffix(".parquet")


def default_failed_keys_file() -> Path:
    return Path(f"sluice-delete-failed-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.jsonl")


def plan_target(
    env: Env,
    *,
    types: Sequence[str] = (),
    prefix: str | None = None,
    day: str | None = None,
    from_file: Path | None = None,
) -> tuple[str, list[str]]:
    """The target's description and the prefixes to list in the verified bucket.

    Raises:
        ConfigError: no target or more than one, an unknown type, a malformed day, a prefix
            outside the verified layout, a missing from-file.
        InvalidKey: the prefix is not an s3:// URI.
    """
    given = {"--type/--all-types": types, "--prefix": prefix, "--from-file": from_file}
    chosen = [name for name, value in given.items() if value]
    hint = "name one of --type T, --all-types, --prefix URI or --from-file FILE"
    if len(chosen) != 1:
        what = "no target" if not chosen else f"more than one target ({', '.join(chosen)})"
        raise ConfigError(f"sluice delete needs exactly one target: {what}", hint=hint)
    if day is not None:
        if not types:
            raise ConfigError("--day goes with --type or --all-types", hint=hint)
        try:
            datetime.strptime(day, "%Y-%m-%d")
        except ValueError:
            raise ConfigError(
                f"--day {day!r} is not a day", hint="write it as YYYY-MM-DD"
            ) from None
    bucket = env.config.buckets.verified
    if types:
        unknown = [t for t in types if t not in ALL_TYPES]
        if unknown:
            raise ConfigError(
                f"unknown type {unknown[0]!r}", hint=f"use one of {', '.join(ALL_TYPES)}"
            )
        prefixes = [table_prefix(t) if day is None else partition_prefix(t, day) for t in types]
        return f"type {', '.join(types)}" + (f", day {day}" if day else ""), prefixes
    if prefix is not None:
        uri = parse_uri(prefix)
        layout = f"s3://{bucket}/{VERIFIED_PREFIX}"
        if uri.bucket != bucket or not uri.key.startswith(VERIFIED_PREFIX):
            raise ConfigError(
                f"--prefix {prefix} is outside the verified files ({layout})",
                hint=f"sluice delete removes verified files only: give a prefix under {layout}",
            )
        return f"prefix {prefix}", [uri.key]
    assert from_file is not None
    if not from_file.is_file():
        raise ConfigError(f"--from-file {from_file}: no such file")
    return f"keys of {from_file}", []


def _file_keys(path: Path, bucket: str, *, check_only: bool = False) -> Iterator[str]:
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


class _Run:
    """The shared state of one delete: counters, caches, the limiter, the failed-keys file."""

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
        # source URI -> exists; file-name hash -> source URI (see the module docstring)
        self._sources: dict[str, bool] = {}
        self._named: dict[str, str] = {}
        self._footers: ThreadPoolExecutor | None = None
        self._fs: Any = None

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
        keep, refused, errors = self._check(batch) if self.check_sources else (batch, {}, {})
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

    # -- promise 1 -----------------------------------------------------------------------

    def _check(self, keys: list[str]) -> tuple[list[str], dict[str, str], dict[str, str]]:
        """Split a batch into (deletable, refused: key -> why, errors: key -> why)."""
        assert self._footers is not None
        sources = self._sources_of(keys)
        unknown = {s for s in sources.values() if isinstance(s, str) and s not in self._sources}
        checked = dict(zip(unknown, self._footers.map(self._exists, unknown), strict=True))
        with self._lock:
            for source, exists in checked.items():
                if isinstance(exists, SluiceError):
                    continue  # not cached: the next batch asks again
                self._sources[source] = exists
                if not exists:
                    self.result.missing_source_count += 1
                    if len(self.result.missing_sources) < SAMPLE_SIZE:
                        self.result.missing_sources.append(source)
        keep: list[str] = []
        refused: dict[str, str] = {}
        errors: dict[str, str] = {}
        for key, found in sources.items():
            problem = checked.get(found) if isinstance(found, str) else found
            if isinstance(problem, SluiceError):
                errors[key] = (
                    f"could not check the source: {problem.error_class}: {problem.message}"
                )
            elif found is None:
                refused[key] = "refused: the file records no source (sluice.source_ref)"
            elif isinstance(found, str) and not self._sources[found]:
                refused[key] = f"refused: source {found} is gone, the file cannot be rebuilt"
            else:
                keep.append(key)
        return keep, refused, errors

    def _sources_of(self, keys: list[str]) -> dict[str, str | SluiceError | None]:
        """The source of each key, reading one footer per file name first: the files of one
        source share its hash as their name, so one footer usually answers for all of them."""
        assert self._footers is not None
        found: dict[str, str | SluiceError | None] = {}
        firsts = {_name(k): k for k in reversed(keys)}
        for wanted in (list(firsts.values()), keys):
            todo = [k for k in wanted if k not in found]
            found.update(zip(todo, self._footers.map(self._source_of, todo), strict=True))
        # The second round reads only the files whose name is not their source's hash
        # (copies): the others are answered from the names the first round learned.
        return {key: found[key] for key in keys}

    def _source_of(self, key: str) -> str | SluiceError | None:
        name = _name(key)
        if (known := self._named.get(name)) is not None:
            return known
        if self._fs is None:
            with self._lock:
                if self._fs is None:
                    self._fs = self.store.arrow_filesystem()
        fs, root = self._fs
        try:
            # Through the store's Arrow filesystem, not `store.open`: S3's stream cannot seek,
            # and the footer is a ranged read at the end of the file.
            meta = pq.read_metadata(f"{root}{self.result.bucket}/{key}", filesystem=fs)
        except FileNotFoundError:
            return ObjectNotFound(f"no such object: {key}", key=key)
        except OSError as exc:
            if "not a parquet" in str(exc).lower() or "magic" in str(exc).lower():
                return None  # not a Parquet file: it records no source
            return TransientError(f"reading the footer of {key}: {exc}", key=key)
        raw = (meta.metadata or {}).get(SOURCE_REF_METADATA)
        if not raw:
            return None
        source: str = raw.decode("utf-8", "replace")
        if parse_verified_key(key) is not None and source_hash(source) == name:
            with self._lock:
                self._named[name] = source
        return source

    def _exists(self, source: str) -> bool | SluiceError:
        try:
            uri = parse_uri(source)
            return self.store.exists(uri.bucket, uri.key)
        except TransientError as exc:
            return exc
        except TerminalError:
            return False  # a malformed source URI names nothing that can be reprocessed

    def run(self, keys: Iterator[str], on_progress: OnProgress | None) -> None:
        threads = [threading.Thread(target=self.produce, args=(keys,), daemon=True)]
        threads += [
            threading.Thread(target=self.work, daemon=True) for _ in range(self.result.workers)
        ]
        with ThreadPoolExecutor(FOOTER_READERS, thread_name_prefix="footer") as self._footers:
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


def delete(
    env: Env,
    *,
    types: Sequence[str] = (),
    prefix: str | None = None,
    day: str | None = None,
    from_file: Path | None = None,
    workers: int = DEFAULT_WORKERS,
    dry_run: bool = False,
    yes: bool = False,
    allow_missing_sources: bool = False,
    failed_keys_file: Path | None = None,
    command: str | None = None,
    on_progress: OnProgress | None = None,
    batch_size: int = MAX_DELETE_BATCH,
    backoff: Backoff = Backoff(),
) -> DeleteResult:
    """Delete the verified files of `types` (on `day`), under `prefix`, or named in `from_file`.

    `dry_run` lists, counts, samples and checks sources, and changes nothing. Files whose source
    raw object is gone are refused (and named in the failed-keys file) unless
    `allow_missing_sources`. Keys not deleted are written to `failed_keys_file` (default: a
    timestamped file in the working directory), created only when one is; `result.ok` is False
    then. `command` is the operator's command line, for the guard's hint.

    Raises:
        ConfigError: a bad target (see `plan_target`), `workers` or `batch_size` out of range,
            a malformed from-file, the failed-keys file being the from-file.
        InvalidKey: the prefix is not an s3:// URI.
        ProtectedEnvironment: a protected environment without `yes` (nothing deleted).
        SluiceError: listing failed (what was deleted before stays deleted; run it again).
    """
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, not {workers}", hint="e.g. --workers 8")
    if not 1 <= batch_size <= MAX_DELETE_BATCH:
        raise ConfigError(f"batch size must be between 1 and {MAX_DELETE_BATCH}")
    if backoff.attempts < 1:
        raise ConfigError("at least one attempt per batch")
    target, prefixes = plan_target(env, types=types, prefix=prefix, day=day, from_file=from_file)
    bucket = env.config.buckets.verified
    failed_path = failed_keys_file or default_failed_keys_file()
    if from_file is not None:
        if failed_path.resolve() == from_file.resolve():
            raise ConfigError(
                "--failed-keys must differ from --from-file (it is rewritten while read)",
                hint="leave --failed-keys out: a new timestamped file is used",
            )
        for _ in _file_keys(from_file, bucket, check_only=True):
            pass  # a malformed line is refused before anything is deleted
    where = [f"s3://{bucket}/{p}" for p in prefixes] or [str(from_file)]
    plan = f"delete every verified file of {target}: " + ", ".join(where)
    go = confirm_destructive(env, plan, yes=yes, dry_run=dry_run, command=command)
    result = DeleteResult(
        target=target,
        bucket=bucket,
        prefixes=prefixes,
        from_file=None if from_file is None else str(from_file),
        dry_run=not go,
        workers=workers,
        sources_checked=not allow_missing_sources,
        lowest_workers=workers,
    )
    keys = (
        _file_keys(from_file, bucket)
        if from_file is not None
        else (o.key for p in prefixes for o in env.store.list(bucket, p))
    )
    run = _Run(
        env,
        result,
        batch_size=batch_size,
        backoff=backoff,
        failed_keys_file=failed_path,
        check_sources=not allow_missing_sources,
    )
    started = time.monotonic()
    run.run(keys, on_progress)
    result.seconds = time.monotonic() - started
    result.lowest_workers = run.limiter.lowest
    if run.crash is not None:
        if not isinstance(run.crash, SluiceError):
            raise run.crash
        result.aborted = f"{run.crash.error_class}: {run.crash.message}"
        if not isinstance(run.crash, TerminalError) or result.listed == 0:
            raise run.crash
    return result


def next_step(env: Env, result: DeleteResult) -> str | None:
    """The command that finishes a delete that did not go through, or None."""
    if result.ok or result.dry_run or result.failed_keys_file is None:
        return None
    again = f"{command_prefix(env)} delete --from-file {result.failed_keys_file}"
    if result.refused and not result.failed:
        return (
            f"redrive or restore the missing sources; or, to delete files that cannot be "
            f"rebuilt: {again} --allow-missing-sources"
        )
    return again
