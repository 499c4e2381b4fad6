"""Planning a run: which sources to send, which files to delete first, which are orphans.

The sources of each mode:

- `--s3-uri`: the object; `--s3-prefix`: every object listed under the prefix (streamed: each
  chunk of sources is written as it fills, so memory does not grow with the prefix);
- `--parquet-uri`: the distinct source_refs of the file's rows;
- `--source-ref-day`: the distinct source_refs the query engine finds in the table's day, and
  those of any file under the day's partitions that the engine does not see (a partition not
  registered), found by listing them.

Every source is checked to exist before anything is deleted or sent (promise 1): a missing one
stops the run, unless `--skip-missing-sources` excludes it; `--limit` excludes all sources past
the first N. The files of excluded sources are never deleted.

The files of the targeted partitions (the day's, or the one file of `--parquet-uri`) are sorted
into three kinds:

- a file named after a run source (`<source-hash>.parquet`, the key being a pure function of the
  source: promise 2) is that source's output: the worker rewrites it in place, or removes it if
  the source no longer produces it;
- a file whose rows all come from run sources but whose name is not theirs (a copy, a file of
  an older tool) is an orphan: once its sources are reprocessed its rows are in their own files,
  so it is removed then (`--wait`, or `--resume RUN_ID --finish`);
- a file holding rows of a source the run excludes, or rows without a source_ref, is kept:
  nothing could rebuild those rows.

`--s3-uri` and `--s3-prefix` target sources, not partitions: their files are the outputs the
ledger lists for them. The partitions those files sit in hold other sources' files too, which
are none of the run's business, so these modes have no orphans.

With `--delete-parquet` the sources' files and the orphans are deleted before any message is
sent, the older tools' way (queries see a gap until the queue drains).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from sluice.backends.ledger.base import FileRecord
from sluice.env import Env
from sluice.errors import ConfigError
from sluice.layout import ObjectUri, parse_uri, parse_verified_key, partition_prefix, source_hash
from sluice.ops.redrive.model import (
    SAMPLES,
    KeptFile,
    MissingSources,
    Mode,
    Orphan,
    RedriveRequest,
    RedriveResult,
)
from sluice.ops.redrive.runfiles import RunFiles
from sluice.ops.redrive.sources import (
    HEAD_BATCH,
    HEAD_THREADS,
    SOURCE_COLUMN,
    FileSources,
    day_sources,
    exist_flags,
    file_sources,
    raw_prefix,
    raw_uri,
    verified_file,
)

FILE_CHUNK = 1000  # files per targets/orphans chunk: one delete request each
MANIFEST_SAMPLES = 100
MISSING_SHOWN = 20


class ChunkSink:
    """Items written as numbered chunk files of a run as they come (or, for a plan that is
    only shown, kept in a list): memory holds one chunk at a time."""

    def __init__(
        self,
        files: RunFiles | None,
        kind: str,
        size: int,
        on_chunk: Callable[[list[Any]], None] | None = None,
    ) -> None:
        self.files = files
        self.kind = kind
        self.size = size
        self.on_chunk = on_chunk
        self.count = 0
        self.chunks = 0
        self.items: list[Any] = []  # every item when shown only; else the first SAMPLES
        self._chunk: list[Any] = []

    def add(self, item: Any) -> None:
        self.count += 1
        self._chunk.append(item)
        if self.files is None or len(self.items) < SAMPLES:
            self.items.append(item)
        if len(self._chunk) >= self.size:
            self.flush()

    def flush(self) -> None:
        if not self._chunk:
            return
        if self.on_chunk is not None:
            self.on_chunk(self._chunk)
        if self.files is not None:
            self.files.put_chunk(self.kind, self.chunks, {"items": self._chunk})
        self.chunks += 1
        self._chunk = []


class Planner:
    """Builds one run's plan into `result` and its chunk files (none when `files` is None)."""

    def __init__(
        self, env: Env, request: RedriveRequest, files: RunFiles | None, result: RedriveResult
    ) -> None:
        assert request.target is not None
        self.env = env
        self.request = request
        self.target = request.target
        self.files = files
        self.result = result
        self.run_id = files.run_id if files is not None else "dry-run"
        raw_modes = (Mode.S3_URI, Mode.S3_PREFIX)
        on_chunk = self._ledger_outputs if self.target.mode in raw_modes else None
        self.sources = ChunkSink(files, "chunks", request.chunk_size, on_chunk)
        self.targets = ChunkSink(files, "targets", FILE_CHUNK)
        self.orphans = ChunkSink(files, "orphans", FILE_CHUNK)
        self.active: set[str] = set()
        self.excluded: dict[str, str] = {}  # source -> why (day and parquet modes)
        self.missing: list[str] = []
        self.missing_count = 0
        self.touched: dict[str, set[str]] = defaultdict(set)
        self._by_hash: dict[str, str] = {}  # day mode: source hash -> source of the day

    # -- sources ----------------------------------------------------------------------------

    def add_source(self, uri: str) -> None:
        seq = self.sources.count
        # The redrive id is fixed here, once: a chunk sent again after an interruption carries
        # the same ids, and the worker processes a redrive id once however often it arrives.
        self.sources.add([uri, f"{self.run_id}.{seq:07d}"])
        if self.target.mode in (Mode.PARQUET_URI, Mode.SOURCE_REF_DAY):
            self.active.add(uri)

    def _full(self) -> bool:
        return self.request.limit is not None and self.sources.count >= self.request.limit

    def add_checked(self, refs: Iterable[str]) -> None:
        """Check that each source exists, then take it (within the limit) or exclude it."""
        todo = iter(refs)
        with ThreadPoolExecutor(HEAD_THREADS) as pool:
            while not self._full():
                room = HEAD_BATCH
                if self.request.limit is not None:
                    room = min(room, self.request.limit - self.sources.count)
                batch = list(islice(todo, room))
                if not batch:
                    break
                for uri, exists in zip(batch, exist_flags(self.env, pool, batch), strict=True):
                    if exists:
                        self.add_source(uri)
                        continue
                    self.missing_count += 1
                    if len(self.missing) < MANIFEST_SAMPLES:
                        self.missing.append(uri)
                    self.excluded[uri] = "its raw object is missing"
        for uri in todo:  # past the limit: not looked at
            self.result.excluded_by_limit += 1
            self.excluded[uri] = "past --limit"

    def _ledger_outputs(self, chunk: list[Any]) -> None:
        """The files the ledger lists for a chunk of sources (the raw modes' targets)."""

        def get(item: Any) -> FileRecord | None:
            ref = parse_uri(item[0])
            return self.env.ledger.get(ref.bucket, ref.key)

        with ThreadPoolExecutor(HEAD_THREADS) as pool:
            records = list(pool.map(get, chunk))
        for record in records:
            if record is None:
                continue
            uris = [o.uri for o in record.outputs if o.hour] + list(record.pending_outputs)
            for uri in dict.fromkeys(uris):
                ref = parse_uri(uri)
                parsed = parse_verified_key(ref.key)
                if ref.bucket != self.env.config.buckets.verified or parsed is None:
                    continue
                self.touched[parsed.day].add(parsed.type)
                self._own(uri)

    # -- files ------------------------------------------------------------------------------

    def _own(self, uri: str) -> None:
        if self.request.delete_parquet:
            self.targets.add(uri)
        else:
            self.result.replaced_in_place += 1

    def _keep(self, uri: str, reason: str) -> None:
        self.result.kept_count += 1
        if self.files is None or len(self.result.kept) < MANIFEST_SAMPLES:
            self.result.kept.append(KeptFile(uri, reason))

    def classify(self, uri: str, name: str, read: FileSources | None) -> None:
        """Sort one file of the targeted partitions (`read`: its sources, when read)."""
        stem = name.removesuffix(".parquet")
        if read is None:  # named after a source of the day: see `plan_day`
            owner = self._by_hash.get(stem)
            assert owner is not None
            if owner in self.active:
                self._own(uri)
            else:
                self._keep(uri, f"its source {owner} is excluded: {self.excluded[owner]}")
            return
        owner = next((s for s in read.sources if source_hash(s) == stem), None)
        if owner is not None and owner in self.active:
            # The worker writes this very key when it reprocesses `owner`, whatever the file
            # holds now: it is that source's output to replace, never an orphan to remove.
            self._own(uri)
            return
        if read.unattributed_rows:
            self._keep(uri, f"{read.unattributed_rows} of its rows have no {SOURCE_COLUMN}")
            return
        foreign = [s for s in read.sources if s not in self.active]
        if foreign:
            why = self.excluded.get(foreign[0], "not a source of this run")
            self._keep(uri, f"holds rows of {foreign[0]} ({why})")
            return
        if self.request.delete_parquet:
            self.targets.add(uri)
        else:
            self.orphans.add(asdict(Orphan(uri, read.sources)))

    # -- the modes --------------------------------------------------------------------------

    def plan(self) -> None:
        mode = self.target.mode
        if mode is Mode.S3_URI:
            assert self.target.uri is not None
            self.add_checked([str(raw_uri(self.env, self.target.uri))])
        elif mode is Mode.S3_PREFIX:
            self.plan_prefix()
        elif mode is Mode.PARQUET_URI:
            self.plan_file()
        else:
            self.plan_day()
        for sink in (self.sources, self.targets, self.orphans):
            sink.flush()
        self._refuse_missing()
        if self.sources.count == 0:
            raise ConfigError(
                f"nothing to redrive: {self.target.describe()} names no source",
                hint="check the target with --dry-run; sources past --limit or excluded as"
                " missing are not sent",
            )

    def plan_prefix(self) -> None:
        assert self.target.uri is not None
        prefix = raw_prefix(self.env, self.target.uri)
        # Listed objects exist: the listing is the existence check, and holds nothing back.
        for info in self.env.store.list(prefix.bucket, prefix.key):
            if info.key.endswith("/"):
                continue  # a console-made "folder" marker, not an object
            if self._full():
                self.result.excluded_by_limit += 1
            else:
                self.add_source(info.uri)

    def plan_file(self) -> None:
        assert self.target.uri is not None
        ref, parsed = verified_file(self.env, self.target.uri)
        read = file_sources(self.env, ref)
        if not read.sources:
            raise ConfigError(
                f"{ref} has no {SOURCE_COLUMN} in its rows: nothing says which raw objects"
                " to redrive",
                hint="a file written by another tool; if its rows are copies, remove it with"
                " sluice delete --prefix URI",
            )
        self.touched[parsed.day].add(parsed.type)
        self.add_checked(read.sources)
        self.classify(str(ref), parsed.name, read)

    def plan_day(self) -> None:
        assert self.target.day is not None and self.target.type is not None
        day, type_ = self.target.day, self.target.type
        queried = day_sources(self.env, type_, day)
        self._by_hash = {source_hash(s): s for s in queried}
        seen = set(queried)
        bucket = self.env.config.buckets.verified
        files: list[tuple[str, str, FileSources | None]] = []
        extra: dict[str, None] = {}  # sources of files the engine did not see, in order
        for info in self.env.store.list(bucket, partition_prefix(type_, day)):
            parsed = parse_verified_key(info.key)
            if parsed is None or parsed.type != type_ or parsed.day != day:
                self.result.stray_keys += 1
                continue
            read = None
            if parsed.name.removesuffix(".parquet") not in self._by_hash:
                read = file_sources(self.env, ObjectUri(bucket, info.key))
                extra.update((s, None) for s in read.sources if s not in seen)
            files.append((info.uri, parsed.name, read))
        if files or queried:
            self.touched[day].add(type_)
        self.add_checked([*queried, *extra])
        for uri, name, read in files:
            self.classify(uri, name, read)

    # -- refusing ---------------------------------------------------------------------------

    def _refuse_missing(self) -> None:
        self.result.missing = list(self.missing)
        self.result.missing_count = self.missing_count
        if not self.missing_count or self.request.skip_missing_sources:
            return
        shown = "\n".join(f"  {uri}" for uri in self.missing[:MISSING_SHOWN])
        more = self.missing_count - min(len(self.missing), MISSING_SHOWN)
        raise MissingSources(
            f"{self.missing_count} source raw object(s) of this redrive are missing, so their"
            f" verified rows could not be rebuilt; nothing was deleted or sent:\n{shown}"
            + (f"\n  … and {more} more" if more > 0 else ""),
            hint=f"sluice redrive {self.target.describe()} --skip-missing-sources   (redrives"
            " the others and leaves the missing sources' files as they are)",
            missing=self.missing,
            missing_count=self.missing_count,
        )

    # -- the manifest -----------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        result = self.result
        result.sources = self.sources.count
        result.send = [item[0] for item in self.sources.items]
        result.to_delete = self.targets.count
        result.delete = list(self.targets.items)
        result.orphans = self.orphans.count
        result.orphan_list = [Orphan(o["uri"], tuple(o["sources"])) for o in self.orphans.items]
        req = self.request
        assert req.target is not None
        return {
            "version": 1,
            "run_id": self.run_id,
            "environment": self.env.config.name,
            "created_at": datetime.now(UTC).isoformat(),
            "target": {k: v for k, v in asdict(req.target).items() if v is not None},
            "delete_parquet": req.delete_parquet,
            "skip_missing_sources": req.skip_missing_sources,
            "limit": req.limit,
            "sources": self.sources.count,
            "chunks": self.sources.chunks,
            "targets": self.targets.count,
            "target_chunks": self.targets.chunks,
            "orphans": self.orphans.count,
            "orphan_chunks": self.orphans.chunks,
            "missing": self.missing,
            "missing_count": self.missing_count,
            "excluded_by_limit": result.excluded_by_limit,
            "replaced_in_place": result.replaced_in_place,
            "kept": [asdict(k) for k in result.kept[:MANIFEST_SAMPLES]],
            "kept_count": result.kept_count,
            "stray_keys": result.stray_keys,
            "touched": {day: sorted(types) for day, types in sorted(self.touched.items())},
        }


def describe_plan(result: RedriveResult) -> str:
    """The plan in a few lines: what the guard shows before it asks for --yes."""
    lines = [f"redrive {result.target.describe()}"]
    if result.to_delete:
        lines.append(f"  delete first: {result.to_delete} verified file(s) (--delete-parquet)")
    lines.append(f"  send: {result.sources} redrive_raw_file message(s)")
    if result.replaced_in_place:
        lines.append(f"  rewritten in place by the worker: {result.replaced_in_place} file(s)")
    if result.orphans:
        lines.append(f"  remove once reprocessed: {result.orphans} orphan file(s)")
    if result.missing_count:
        lines.append(f"  excluded, raw object missing: {result.missing_count} source(s)")
    if result.excluded_by_limit:
        lines.append(f"  excluded by --limit: {result.excluded_by_limit} source(s)")
    if result.kept_count:
        lines.append(f"  kept as they are: {result.kept_count} file(s)")
    return "\n".join(lines)
