"""Promise 1 for `sluice delete`: a file goes only if its source raw object still exists."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow.parquet as pq

from sluice.backends.store.base import ObjectStore
from sluice.errors import ObjectNotFound, SluiceError, TerminalError, TransientError
from sluice.layout import parse_uri, parse_verified_key, source_hash
from sluice.ops.delete.model import SAMPLE_SIZE, DeleteResult

SOURCE_REF_METADATA = b"sluice.source_ref"
FOOTER_READERS = 16  # footers are small ranged reads: latency-bound, so more than the workers


def _name(key: str) -> str:
    return key.rsplit("/", 1)[-1].removesuffix(".parquet")


class SourceCheck:
    """Which files of a batch may be deleted, judged by their sources, with a run-wide cache.

    A verified file is deleted only if its source raw object exists, so it can be rebuilt: the
    source is read from the file's Parquet footer (`sluice.source_ref`), each distinct source is
    checked once per run with a `head`, and a file whose name is the hash of a source already
    read needs no footer read at all (the name is a pure function of the source). Files whose
    source is gone, or that record none, are refused.

    `footers` is the pool that reads footers and heads sources; the run sets it while it lasts.
    `lock` is the run's lock: it guards the caches and the result's missing-source counters.
    """

    def __init__(self, store: ObjectStore, result: DeleteResult, lock: threading.Lock) -> None:
        self.store = store
        self.result = result
        self.footers: ThreadPoolExecutor | None = None
        self._lock = lock
        # source URI -> exists; file-name hash -> source URI (see the class docstring)
        self._sources: dict[str, bool] = {}
        self._named: dict[str, str] = {}
        self._fs: Any = None

    def check(self, keys: list[str]) -> tuple[list[str], dict[str, str], dict[str, str]]:
        """Split a batch into (deletable, refused: key -> why, errors: key -> why)."""
        assert self.footers is not None
        sources = self._sources_of(keys)
        unknown = {s for s in sources.values() if isinstance(s, str) and s not in self._sources}
        checked = dict(zip(unknown, self.footers.map(self._exists, unknown), strict=True))
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
        assert self.footers is not None
        found: dict[str, str | SluiceError | None] = {}
        firsts = {_name(k): k for k in reversed(keys)}
        for wanted in (list(firsts.values()), keys):
            todo = [k for k in wanted if k not in found]
            found.update(zip(todo, self.footers.map(self._source_of, todo), strict=True))
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
