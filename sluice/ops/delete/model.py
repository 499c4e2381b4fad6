"""The types of `sluice delete`: what it deletes, the progress snapshot and the run's result."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sluice.backends.store.base import VersionRef

SAMPLE_SIZE = 10


@dataclass(frozen=True)
class Entry:
    """One thing to delete: a file's current object (`version_id` None: a plain delete), or,
    with `--all-versions`, one stored version or delete marker of it."""

    key: str
    version_id: str | None = None
    delete_marker: bool = False

    @property
    def ref(self) -> VersionRef:
        return VersionRef(self.key, self.version_id)


@dataclass(frozen=True)
class DeleteProgress:
    listed: int
    deleted: int
    refused: int
    failed: int
    workers: int  # batches allowed in flight now (lower while throttled)


@dataclass
class DeleteResult:
    """What a delete did. The counts are of entries: files, or with `all_versions` on a
    versioned bucket, versions and delete markers (`versions` + `delete_markers` = `listed`)."""

    target: str
    bucket: str
    prefixes: list[str]
    from_file: str | None
    dry_run: bool
    workers: int
    sources_checked: bool  # False with allow_missing_sources: no source was looked at
    all_versions: bool = False  # every version and delete marker of each file was targeted
    versioned: bool = False  # the bucket keeps earlier versions of its objects
    listed: int = 0
    deleted: int = 0
    would_delete: int = 0  # dry run: listed minus refused
    refused: int = 0  # entries whose file's source raw object is gone (or unknown)
    failed: int = 0  # entries not deleted for any other reason
    versions: int = 0  # with all_versions on a versioned bucket: object versions listed
    delete_markers: int = 0  # with all_versions on a versioned bucket: delete markers listed
    history: str | None = None  # what stays behind a plain delete on a versioned bucket
    missing_sources: list[str] = field(default_factory=list)  # a sample
    missing_source_count: int = 0
    sample: list[str] = field(default_factory=list)  # the first keys listed
    failed_keys_file: str | None = None  # written only when an entry was refused or failed
    retries: int = 0  # whole-batch retries (throttling, transient errors)
    lowest_workers: int = 0
    aborted: str | None = None  # why the run stopped early (a terminal error of a whole batch)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.refused == 0 and self.aborted is None


OnProgress = Callable[[DeleteProgress], None]
