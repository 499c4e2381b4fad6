"""`sluice delete`: bulk delete of verified files by table (and day), by prefix or from a file."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path

from sluice.backends.store.base import MAX_DELETE_BATCH
from sluice.env import Env
from sluice.errors import ConfigError, SluiceError, TerminalError
from sluice.layout import (
    ALL_TYPES,
    VERIFIED_PREFIX,
    parse_uri,
    partition_prefix,
    table_prefix,
)
from sluice.ops.delete.batches import DeleteRun, default_failed_keys_file, file_entries
from sluice.ops.delete.limiter import Backoff, Limiter
from sluice.ops.delete.model import SAMPLE_SIZE, DeleteProgress, DeleteResult, Entry, OnProgress
from sluice.ops.delete.sources import (
    FOOTER_READERS,
    SOURCE_REF_METADATA,
    TAIL_BYTES,
    SourceCheck,
    read_source_ref,
)
from sluice.ops.guard import confirm_destructive
from sluice.ops.queues import command_prefix

__all__ = [
    "DEFAULT_WORKERS",
    "FOOTER_READERS",
    "SAMPLE_SIZE",
    "SOURCE_REF_METADATA",
    "TAIL_BYTES",
    "Backoff",
    "DeleteProgress",
    "DeleteResult",
    "DeleteRun",
    "Entry",
    "Limiter",
    "OnProgress",
    "SourceCheck",
    "default_failed_keys_file",
    "delete",
    "next_step",
    "plan_target",
    "read_source_ref",
]

DEFAULT_WORKERS = 8
_DEFAULT_BACKOFF = Backoff()  # frozen: one shared default is safe


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
        prefixes = list(dict.fromkeys(prefixes))  # a type named twice is listed once
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


def delete(
    env: Env,
    *,
    types: Sequence[str] = (),
    prefix: str | None = None,
    day: str | None = None,
    from_file: Path | None = None,
    all_versions: bool = False,
    workers: int = DEFAULT_WORKERS,
    dry_run: bool = False,
    yes: bool = False,
    allow_missing_sources: bool = False,
    failed_keys_file: Path | None = None,
    command: str | None = None,
    on_progress: OnProgress | None = None,
    batch_size: int = MAX_DELETE_BATCH,
    backoff: Backoff = _DEFAULT_BACKOFF,
) -> DeleteResult:
    """Delete the verified files of `types` (on `day`), under `prefix`, or named in `from_file`.

    On a versioned bucket a plain delete only adds delete markers: the earlier versions stay
    (billed, restorable), which `result.history` says. `all_versions` deletes every version and
    delete marker of the targeted files instead (on a bucket without versions it is a plain
    delete). `dry_run` lists, counts (versions and delete markers too), samples and checks
    sources, and changes nothing. Files whose source raw object is gone are refused (and named
    in the failed-keys file) unless `allow_missing_sources`. Entries not deleted are written to
    `failed_keys_file` (default: a timestamped file in the working directory; a version's line
    carries its version id), created only when one is; `result.ok` is False then. `command` is
    the operator's command line, for the guard's hint. How the batches run is told in
    `DeleteRun`. An interrupted delete resumes by running it again: what was deleted is no
    longer listed.

    Raises:
        ConfigError: a bad target (see `plan_target`), `workers` or `batch_size` out of range,
            a malformed from-file, one naming versions without `all_versions`, the failed-keys
            file being the from-file.
        InvalidKey: the prefix is not an s3:// URI.
        ProtectedEnvironment: a protected environment without `yes` (nothing deleted).
        SluiceError: listing failed, or telling whether the bucket is versioned did (what was
            deleted before stays deleted; run it again).
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
        # Every line is read first: a malformed one is refused before anything is deleted.
        names_versions = False
        for entry in file_entries(from_file, bucket):
            names_versions |= entry.version_id is not None
        if names_versions and not all_versions:
            raise ConfigError(
                f"--from-file {from_file} names versions (written by --all-versions)",
                hint="add --all-versions to delete them",
            )
    versioned = env.store.versioned(bucket)
    by_version = all_versions and versioned
    where = [f"s3://{bucket}/{p}" for p in prefixes] or [str(from_file)]
    what = "every version and delete marker of " if by_version else ""
    plan = f"delete {what}every verified file of {target}: " + ", ".join(where)
    go = confirm_destructive(env, plan, yes=yes, dry_run=dry_run, command=command)
    result = DeleteResult(
        target=target,
        bucket=bucket,
        prefixes=prefixes,
        from_file=None if from_file is None else str(from_file),
        dry_run=not go,
        workers=workers,
        sources_checked=not allow_missing_sources,
        all_versions=all_versions,
        versioned=versioned,
        lowest_workers=workers,
    )
    if versioned and not all_versions:
        result.history = (
            f"s3://{bucket} keeps versions: this delete {'would add' if not go else 'adds'} "
            "delete markers only, and every earlier version stays (billed, restorable); "
            "--all-versions removes them"
        )
    if from_file is not None:
        listings = [_file_listing(env, from_file, bucket, by_version)]
    else:
        listings = [_listing(env, bucket, p, by_version) for p in prefixes]
    run = DeleteRun(
        env,
        result,
        batch_size=batch_size,
        backoff=backoff,
        failed_keys_file=failed_path,
        check_sources=not allow_missing_sources,
    )
    started = time.monotonic()
    run.run(listings, on_progress)
    result.seconds = time.monotonic() - started
    result.lowest_workers = run.limiter.lowest
    if run.crash is not None:
        if not isinstance(run.crash, SluiceError):
            raise run.crash
        result.aborted = f"{run.crash.error_class}: {run.crash.message}"
        if not isinstance(run.crash, TerminalError) or result.listed == 0:
            raise run.crash
    return result


def _listing(env: Env, bucket: str, prefix: str, by_version: bool) -> Iterator[Entry]:
    if not by_version:
        return (Entry(o.key) for o in env.store.list(bucket, prefix))
    versions = env.store.list_versions(bucket, prefix)
    return (Entry(v.key, v.version_id, v.delete_marker) for v in versions)


def _file_listing(env: Env, path: Path, bucket: str, by_version: bool) -> Iterator[Entry]:
    """The entries of a failed-keys file; by version, a key without one stands for all of its
    versions and delete markers."""
    for entry in file_entries(path, bucket):
        if not by_version or entry.version_id is not None:
            yield entry
        else:
            for v in env.store.list_versions(bucket, entry.key):
                if v.key == entry.key:  # not the keys it is a prefix of
                    yield Entry(v.key, v.version_id, v.delete_marker)


def next_step(env: Env, result: DeleteResult) -> str | None:
    """The command that finishes a delete that did not go through, or None."""
    if result.ok or result.dry_run or result.failed_keys_file is None:
        return None
    again = f"{command_prefix(env)} delete --from-file {result.failed_keys_file}"
    if result.all_versions:
        again += " --all-versions"
    if result.refused and not result.failed:
        return (
            f"redrive or restore the missing sources; or, to delete files that cannot be "
            f"rebuilt: {again} --allow-missing-sources"
        )
    return again
