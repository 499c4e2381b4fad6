"""Promise 1 for `sluice delete`: a file goes only if its source raw object still exists."""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from itertools import islice
from types import TracebackType
from typing import Generic, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from sluice.backends.store.base import ObjectStore, VersionRef
from sluice.errors import SluiceError, TerminalError, TransientError
from sluice.layout import ObjectUri, parse_uri, parse_verified_key, source_hash
from sluice.ops.delete.model import SAMPLE_SIZE, DeleteResult

SOURCE_REF_METADATA = b"sluice.source_ref"
FOOTER_READERS = 16  # footers, heads and listings are small requests: latency-bound
TAIL_BYTES = 64 * 1024  # one suffix read holds a sluice footer (a few KB) with room to spare
MAX_FOOTER = 16 << 20  # a longer "footer" is a damaged file, not worth downloading
PROBE = 4  # footers read before deciding which raw folders are worth listing
PROBE_ROUNDS = 3
FOLDER_PAGES = 10  # at most 10,000 raw objects listed per folder
PAGE = 1000
MEMORY = 100_000  # names and sources remembered per run (~30 MB at most)
_HASH_NAME = re.compile(r"[0-9a-f]{16}")  # `source_hash`: what the parser names a file

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
T = TypeVar("T")
Found = str | SluiceError | None  # a file's source, why it could not be read, or none recorded


def read_source_ref(store: ObjectStore, bucket: str, file: VersionRef) -> str | None:
    """The source a Parquet file records in its footer (`sluice.source_ref`), or None when it
    records none or is not Parquet. One suffix read (`TAIL_BYTES`), a second one only for a
    footer longer than that.

    Raises:
        ObjectNotFound: no such file (or version).
        TransientError: the store could not be read; ask again.
    """
    tail = store.read_tail(bucket, file.key, TAIL_BYTES, version_id=file.version_id)
    if len(tail) < 12 or tail[-4:] != b"PAR1":
        return None
    need = int.from_bytes(tail[-8:-4], "little") + 8  # footer, its length, the magic
    if need > MAX_FOOTER:
        return None
    if need > len(tail) and len(tail) == TAIL_BYTES:
        tail = store.read_tail(bucket, file.key, need, version_id=file.version_id)
    if need > len(tail):
        return None  # a footer longer than the file: not Parquet
    try:
        # The footer alone, behind the leading magic, is a Parquet file's metadata to pyarrow.
        meta = pq.read_metadata(pa.BufferReader(b"PAR1" + tail[-need:]))
    except (OSError, ValueError):  # ArrowInvalid is a ValueError
        return None
    raw = (meta.metadata or {}).get(SOURCE_REF_METADATA)
    return raw.decode("utf-8", "replace") if raw else None


def _source_name(key: str) -> str | None:
    """The source hash a verified file is named after, or None for any other name (a copy)."""
    parsed = parse_verified_key(key)
    name = None if parsed is None else parsed.name.removesuffix(".parquet")
    return name if name is not None and _HASH_NAME.fullmatch(name) else None


def _folder(source: str) -> ObjectUri | None:
    """The folder of a raw object (its key up to the last `/`); None for one at a bucket's
    root, or a malformed URI."""
    try:
        uri = parse_uri(source)
    except SluiceError:
        return None
    folder, slash, _ = uri.key.rpartition("/")
    return ObjectUri(uri.bucket, folder + slash) if slash else None


class _Memory(Generic[K, V]):
    """A dict that forgets its oldest entries past `MEMORY` (callers hold the check's lock)."""

    def __init__(self) -> None:
        self._items: dict[K, V] = {}

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def put(self, key: K, value: V) -> None:
        if key not in self._items and len(self._items) >= MEMORY:
            del self._items[next(iter(self._items))]
        self._items[key] = value


class _Shared(Generic[K, T]):
    """Jobs run on a pool once at a time per key: callers of a key in flight share its future."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self._pool = pool
        self._running: dict[K, Future[T]] = {}
        self._lock = threading.Lock()

    def run(self, key: K, job: Callable[[], T]) -> Future[T]:
        with self._lock:
            future = self._running.get(key)
            if future is None:
                # `_done` takes the lock too, so it cannot run before the future is registered.
                future = self._running[key] = self._pool.submit(self._done, key, job)
        return future

    def wait(self) -> None:
        """Wait for the jobs in flight now."""
        with self._lock:
            running = list(self._running.values())
        for future in running:
            future.exception()  # waits; the caller of the job sees its outcome

    def _done(self, key: K, job: Callable[[], T]) -> T:
        try:
            return job()
        finally:
            with self._lock:
                del self._running[key]


class SourceCheck:
    """Which files of a batch may be deleted, judged by their sources, with run-wide memory.

    A file is deleted only if its source raw object exists, so that it can be rebuilt. The
    source is what the file's Parquet footer records (`sluice.source_ref`); a file that records
    none is refused. A verified file is named after its source (`source_hash`: a pure function,
    promise 2), so once a name is known to be a source's, every file of that name is answered
    without a request. A name is learned from a footer whose source has that hash, or from a
    listing of the raw folder that holds the source: each listed raw object's URI hashes to the
    names of its files, and the listing proves it exists.

    Listing folders is what keeps the check cheap: the files of a partition come from few raw
    folders (raw objects are filed by arrival hour), so a batch reads `PROBE` footers, lists the
    folders that hold two sources of the probe or more (at most `FOLDER_PAGES` pages each),
    and usually learns every other name of the batch, at one request per 1,000 raw objects
    instead of one footer read and one `head` per source. What the listings did not answer costs
    one footer read per name (each file's own, for names that are not a source hash) and one
    `head` per source. Concurrent batches share every read, listing and head in flight, and
    what was answered is remembered for the run (up to `MEMORY` names and sources).

    `lock` is the run's lock: it guards the memory and the result's missing-source counters.
    Use it as a context manager: leaving it shuts its pool down.
    """

    def __init__(self, store: ObjectStore, result: DeleteResult, lock: threading.Lock) -> None:
        self.store = store
        self.result = result
        self._lock = lock
        self._pool = ThreadPoolExecutor(FOOTER_READERS, thread_name_prefix="sources")
        self._named: _Memory[str, str] = _Memory()  # source hash -> source URI
        self._exists: _Memory[str, bool] = _Memory()  # source URI -> exists
        self._listed: _Memory[ObjectUri, bool] = _Memory()  # raw folders listed
        self._names: _Shared[str, Found] = _Shared(self._pool)
        self._files: _Shared[VersionRef, Found] = _Shared(self._pool)
        self._heads: _Shared[str, bool | SluiceError] = _Shared(self._pool)
        self._folders: _Shared[ObjectUri, None] = _Shared(self._pool)

    def __enter__(self) -> SourceCheck:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._pool.shutdown(cancel_futures=True)

    def check(
        self, files: Iterable[VersionRef]
    ) -> tuple[dict[VersionRef, str], dict[VersionRef, str]]:
        """The files refused and those that could not be checked, each with why; the others
        may be deleted."""
        sources = self._sources_of(files)
        exists = self._exist({s for s in sources.values() if isinstance(s, str)})
        refused: dict[VersionRef, str] = {}
        errors: dict[VersionRef, str] = {}
        for file, source in sources.items():
            found = exists[source] if isinstance(source, str) else source
            if isinstance(found, SluiceError):
                errors[file] = f"could not check the source: {found.error_class}: {found.message}"
            elif source is None:
                refused[file] = "refused: the file records no source (sluice.source_ref)"
            elif not found:
                refused[file] = f"refused: source {source} is gone, the file cannot be rebuilt"
        return refused, errors

    # -- which source -------------------------------------------------------------------------

    def _sources_of(self, files: Iterable[VersionRef]) -> dict[VersionRef, Found]:
        by_name: dict[str, list[VersionRef]] = {}
        found: dict[VersionRef, Found] = {}
        alone: list[VersionRef] = []  # files that must answer for themselves
        for file in files:
            found[file] = None
            if (name := _source_name(file.key)) is None:
                alone.append(file)
            else:
                by_name.setdefault(name, []).append(file)
        unknown = [n for n in by_name if self._known(n) is None]
        for _ in range(PROBE_ROUNDS):
            # What other batches are reading or listing now may answer for many of these.
            self._names.wait()
            self._folders.wait()
            unknown = [n for n in unknown if self._known(n) is None]
            if len(unknown) < 2:
                break
            probe = {n: by_name[n][0] for n in unknown[:PROBE]}
            sources = [s for s in self._read_names(probe).values() if isinstance(s, str)]
            shared = [f for f, n in Counter(map(_folder, sources)).items() if f and n >= 2]
            self._list_folders(shared)
            unknown = unknown[len(probe) :]
            if not shared:
                break
        self._read_names({n: by_name[n][0] for n in unknown if self._known(n) is None})
        for name, named in by_name.items():
            if (source := self._known(name)) is not None:
                found.update(dict.fromkeys(named, source))
            else:
                alone += named  # the name's footer did not confirm it: each file's own
        reads = {file: self._files.run(file, partial(self._read, file)) for file in alone}
        found.update((file, future.result()) for file, future in reads.items())
        return found

    def _known(self, name: str) -> str | None:
        with self._lock:
            return self._named.get(name)

    def _read_names(self, files: dict[str, VersionRef]) -> dict[str, Found]:
        """One footer per name (shared with other batches reading the same name)."""
        reads = {n: self._names.run(n, partial(self._read, f)) for n, f in files.items()}
        return {name: future.result() for name, future in reads.items()}

    def _read(self, file: VersionRef) -> Found:
        try:
            source = read_source_ref(self.store, self.result.bucket, file)
        except SluiceError as exc:
            return exc
        name = _source_name(file.key)
        if source is not None and name is not None and source_hash(source) == name:
            with self._lock:
                self._named.put(name, source)
        return source

    def _list_folders(self, folders: list[ObjectUri]) -> None:
        with self._lock:
            todo = [f for f in folders if self._listed.get(f) is None]
        for future in [self._folders.run(f, partial(self._list_folder, f)) for f in todo]:
            future.result()

    def _list_folder(self, folder: ObjectUri) -> None:
        page: list[str] = []
        try:
            listing = self.store.list(folder.bucket, folder.key, page_size=PAGE)
            for info in islice(listing, FOLDER_PAGES * PAGE):
                page.append(info.uri)
                if len(page) == PAGE:
                    self._learn(page)
                    page = []
        except SluiceError:
            pass  # what it did not list is read from footers and headed instead
        self._learn(page)
        with self._lock:
            self._listed.put(folder, True)

    def _learn(self, sources: list[str]) -> None:
        with self._lock:
            for source in sources:
                self._named.put(source_hash(source), source)
                self._exists.put(source, True)

    # -- does it exist --------------------------------------------------------------------------

    def _exist(self, sources: set[str]) -> dict[str, bool | SluiceError]:
        answers: dict[str, bool | SluiceError] = {}
        heads: dict[str, Future[bool | SluiceError]] = {}
        for source in sources:
            with self._lock:
                known = self._exists.get(source)
            if known is None:
                heads[source] = self._heads.run(source, partial(self._head, source))
            else:
                answers[source] = known
        answers.update((source, future.result()) for source, future in heads.items())
        return answers

    def _head(self, source: str) -> bool | SluiceError:
        try:
            uri = parse_uri(source)
            exists = self.store.exists(uri.bucket, uri.key)
        except TransientError as exc:
            return exc  # not remembered: the next batch asks again
        except TerminalError:
            exists = False  # a malformed source URI names nothing that can be reprocessed
        with self._lock:
            self._exists.put(source, exists)
            if not exists:
                self.result.missing_source_count += 1
                if len(self.result.missing_sources) < SAMPLE_SIZE:
                    self.result.missing_sources.append(source)
        return exists
