"""The result types of `sluice delete`: the progress snapshot and the run's result."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

SAMPLE_SIZE = 10


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
