"""What a redrive is asked to do, what it reports, and the errors it raises."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sluice.errors import ConfigError, TerminalError, TransientError
from sluice.layout import ALL_TYPES, check_day, check_type

DEFAULT_CHUNK_SIZE = 1000  # sources per chunk file: the unit of resume
DEFAULT_MONITOR_LIMIT = 1000  # --monitor without --max-queue-visible
SAMPLES = 20  # items of each list kept in the result of a real run (the run's files hold all)
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


class Mode(StrEnum):
    S3_URI = "s3-uri"
    S3_PREFIX = "s3-prefix"
    PARQUET_URI = "parquet-uri"
    SOURCE_REF_DAY = "source-ref-day"


@dataclass(frozen=True)
class Target:
    """What a run redrives: exactly one of the four modes, with its arguments."""

    mode: Mode
    uri: str | None = None  # s3-uri, s3-prefix, parquet-uri
    day: str | None = None  # source-ref-day
    type: str | None = None  # source-ref-day

    @classmethod
    def of(
        cls,
        *,
        s3_uri: str | None = None,
        s3_prefix: str | None = None,
        parquet_uri: str | None = None,
        source_ref_day: str | None = None,
        type_: str | None = None,
    ) -> Target:
        """The one mode the flags name.

        Raises:
            ConfigError: no mode or several, `--type` without `--source-ref-day` or the other
                way round, a day that is not YYYY-MM-DD, an unknown type.
        """
        given = {
            Mode.S3_URI: s3_uri,
            Mode.S3_PREFIX: s3_prefix,
            Mode.PARQUET_URI: parquet_uri,
            Mode.SOURCE_REF_DAY: source_ref_day,
        }
        chosen = [mode for mode, value in given.items() if value is not None]
        flags = ", ".join(f"--{m.value}" for m in Mode)
        if len(chosen) != 1:
            what = "no mode" if not chosen else "more than one mode"
            raise ConfigError(
                f"{what} given: choose exactly one of {flags}",
                hint="sluice redrive --source-ref-day 2025-11-24 --type lock --dry-run",
            )
        (mode,) = chosen
        if mode is Mode.SOURCE_REF_DAY:
            assert source_ref_day is not None
            if type_ is None:
                raise ConfigError(
                    "--source-ref-day needs --type", hint=f"types: {', '.join(ALL_TYPES)}"
                )
            return cls(mode, day=check_day(source_ref_day), type=check_type(type_))
        if type_ is not None:
            raise ConfigError("--type goes with --source-ref-day only")
        return cls(mode, uri=given[mode])

    def describe(self) -> str:
        if self.mode is Mode.SOURCE_REF_DAY:
            return f"--source-ref-day {self.day} --type {self.type}"
        return f"--{self.mode.value} {self.uri}"


@dataclass(frozen=True)
class Pacing:
    """How fast messages go: `rate` messages per second at most; with `max_queue_visible`,
    sending pauses while the processing queue holds that many visible messages or more."""

    rate: float | None = None
    max_queue_visible: int | None = None
    poll_seconds: float = 2.0

    def __post_init__(self) -> None:
        if self.rate is not None and not self.rate > 0:
            raise ConfigError(f"--rate must be a positive number of messages/s, not {self.rate}")
        if self.max_queue_visible is not None and self.max_queue_visible < 1:
            raise ConfigError(
                f"--max-queue-visible must be at least 1, not {self.max_queue_visible}"
            )
        if not self.poll_seconds > 0:
            raise ConfigError(f"the poll interval must be positive, not {self.poll_seconds}")


@dataclass(frozen=True)
class FollowSettings:
    """How `--wait` follows a run: poll every `poll_seconds`; give up after `timeout_seconds`;
    once the processing queue has been empty for `settle_seconds` with sources still not
    reprocessed, those sources failed (their messages are in the DLQ, or were lost)."""

    timeout_seconds: float = 2 * 3600
    poll_seconds: float = 2.0
    settle_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.timeout_seconds < 0 or self.settle_seconds < 0 or not self.poll_seconds > 0:
            raise ConfigError("--timeout, --poll and --settle must be positive durations")


@dataclass(frozen=True)
class RedriveRequest:
    """One `sluice redrive`: a new run (`target`) or an interrupted one (`resume`)."""

    target: Target | None = None
    resume: str | None = None
    delete_parquet: bool = False
    skip_missing_sources: bool = False
    limit: int | None = None
    dry_run: bool = False
    yes: bool = False
    wait: bool = False
    finish: bool = False
    pacing: Pacing = field(default_factory=Pacing)
    follow: FollowSettings = field(default_factory=FollowSettings)
    chunk_size: int = DEFAULT_CHUNK_SIZE
    command: str | None = None  # the command line, for the guard's hint

    def __post_init__(self) -> None:
        if (self.target is None) == (self.resume is None):
            raise ConfigError(
                "give a mode (--s3-uri, --s3-prefix, --parquet-uri, --source-ref-day) or"
                " --resume RUN_ID, not both and not neither"
            )
        if self.resume is not None and (
            self.delete_parquet or self.skip_missing_sources or self.limit is not None
        ):
            raise ConfigError(
                "--delete-parquet, --skip-missing-sources and --limit are part of a run's plan;"
                " --resume takes the plan as it was made"
            )
        if self.finish and self.resume is None:
            raise ConfigError(
                "--finish completes an earlier run: give it with --resume RUN_ID",
                hint="a new run finishes itself with --wait",
            )
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be at least 1, not {self.limit}")
        if self.chunk_size < 1:
            raise ConfigError(f"chunk size must be at least 1, not {self.chunk_size}")


# Results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeptFile:
    """A file in the targeted partitions that the run leaves alone, and why."""

    uri: str
    reason: str


@dataclass(frozen=True)
class Orphan:
    """A verified file that belongs to no source of the run (a copy, a file of another tool):
    removed once every source whose rows it holds is reprocessed."""

    uri: str
    sources: tuple[str, ...]


@dataclass
class SendStats:
    sent: int = 0
    already_sent: int = 0  # by the interrupted run that this one resumed
    batches: int = 0
    seconds: float = 0.0
    pauses: int = 0
    paused_seconds: float = 0.0

    @property
    def messages_per_second(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


@dataclass
class FollowResult:
    """Where the run's sources stand in the ledger: each done (completed since the run
    started), failed (terminally, or still failed when the queue ran dry) or pending."""

    total: int = 0
    done: int = 0
    failed: list[str] = field(default_factory=list)  # "uri: reason", the first SAMPLES
    failed_count: int = 0
    pending: int = 0
    pending_samples: list[str] = field(default_factory=list)
    seconds: float = 0.0
    timed_out: bool = False
    touched: dict[str, list[str]] = field(default_factory=dict)  # day -> types with outputs

    @property
    def complete(self) -> bool:
        return self.pending == 0 and self.failed_count == 0


@dataclass
class FinishResult:
    """The end of the runbook: orphans removed, catalog repaired, touched days verified."""

    orphans_removed: int = 0
    orphans_kept: list[KeptFile] = field(default_factory=list)
    orphan_errors: dict[str, str] = field(default_factory=dict)
    partitions_added: int = 0
    partitions_dropped: int = 0
    verify: list[dict[str, Any]] = field(default_factory=list)  # day, types, verdict, failures
    verify_failed: bool = False

    @property
    def failed(self) -> bool:
        return bool(self.orphan_errors) or self.verify_failed


@dataclass
class RedriveResult:
    """A run as planned and as far as it went. A dry run lists everything it would delete and
    send; a real run keeps the first SAMPLES of each list here and all of them in its files."""

    run_id: str | None
    target: Target
    location: str | None  # s3://<lake>/redrive/runs/<run-id>/
    dry_run: bool = False
    resumed: bool = False
    delete_parquet: bool = False
    sources: int = 0
    send: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # excluded with --skip-missing-sources
    missing_count: int = 0
    excluded_by_limit: int = 0
    to_delete: int = 0  # --delete-parquet: files deleted before the redrive
    delete: list[str] = field(default_factory=list)
    deleted: int = 0
    orphans: int = 0
    orphan_list: list[Orphan] = field(default_factory=list)
    replaced_in_place: int = 0  # files named after a run source: the worker rewrites them
    kept: list[KeptFile] = field(default_factory=list)
    kept_count: int = 0
    stray_keys: int = 0  # keys under the partitions that are not verified Parquet files
    sending: SendStats = field(default_factory=SendStats)
    follow: FollowResult | None = None
    finish: FinishResult | None = None

    @property
    def failed(self) -> bool:
        follow_failed = self.follow is not None and not self.follow.complete
        return follow_failed or (self.finish is not None and self.finish.failed)


@dataclass(frozen=True)
class RedriveEvent:
    """Progress, for display: `kind` is one of planning, planned, deleted, sent, paused,
    resumed, progress, retrying, failed, orphans, repair, verify."""

    kind: str
    done: int = 0
    total: int = 0
    source: str = ""
    detail: str = ""


OnEvent = Callable[[RedriveEvent], None]


# Errors -------------------------------------------------------------------------------------


class MissingSources(TerminalError):
    """Raw objects of the run are gone, so their verified rows could not be rebuilt (promise 1):
    the run stops before deleting or sending anything (attributes: missing, missing_count)."""


class UnknownRun(ConfigError):
    """`--resume` names no run of this environment."""


class RedriveInterrupted(TransientError):
    """Sending or deleting stopped part-way; `--resume RUN_ID` finishes the run."""


class SourcesPending(TransientError):
    """`--finish` before every source of the run was reprocessed."""
