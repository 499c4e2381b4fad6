"""Where a backfill run keeps its plan and progress: JSON files in the environment's lake bucket.

    backfill/<kind>/runs/<run-id>/manifest.json             the plan: parameters, chunk count
    backfill/<kind>/runs/<run-id>/chunks/chunk-00000.json   one unit of work
    backfill/<kind>/runs/<run-id>/results/chunk-00000.json  its last outcome (succeeded/failed)

Chunk files are written once, while planning; the manifest is written after the last chunk, so
a run id without a manifest was never finished planning and does not exist. A result file is
replaced at each attempt of its chunk: it holds the *last* outcome, which is what resuming
(skip the succeeded) and `rerun --failed` (only the failed) read. A chunk with no result file
was never finished (planned, or interrupted while it ran).

The lake bucket is sluice's own working space; the verified and raw buckets hold only data.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sluice.env import Env
from sluice.errors import ConfigError, ObjectNotFound

ROOT = "backfill/"
_RUN_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6}")
_CHUNK_KEY = re.compile(r"chunk-(\d{5,})")


class Kind(StrEnum):
    PARTITIONS = "partitions"
    REFINE_15M = "refine-15m"


class ChunkStatus(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class UnknownBackfillRun(ConfigError):
    """No backfill run of this environment has the id (attribute: run_id)."""


def new_run_id(now: datetime | None = None) -> str:
    """Sortable by creation time, unique: `20251124T210935Z-3fa9c1`."""
    t = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{t:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def chunk_key(number: int) -> str:
    return f"chunk-{number:05d}"


def runs_prefix(kind: Kind) -> str:
    return f"{ROOT}{kind.value}/runs/"


@dataclass(frozen=True)
class ChunkResult:
    """The outcome of one attempt at a chunk, as its result file holds it."""

    chunk: str
    status: ChunkStatus
    started_at: str
    seconds: float
    attempts: int  # calls made, retries after throttling included
    error: dict[str, Any] | None = None  # SluiceError.to_dict() or {"error", "message"}
    detail: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> dict[str, Any]:
        return {
            "chunk": self.chunk,
            "status": self.status.value,
            "startedAt": self.started_at,
            "seconds": self.seconds,
            "attempts": self.attempts,
            "error": self.error,
            "detail": self.detail,
        }

    @classmethod
    def decode(cls, raw: dict[str, Any]) -> ChunkResult:
        return cls(
            chunk=str(raw["chunk"]),
            status=ChunkStatus(raw["status"]),
            started_at=str(raw["startedAt"]),
            seconds=float(raw["seconds"]),
            attempts=int(raw["attempts"]),
            error=raw.get("error"),
            detail=dict(raw.get("detail") or {}),
        )


class RunStore:
    """The files of one run (a run being planned, or one opened with `open_run`)."""

    def __init__(self, env: Env, kind: Kind, run_id: str) -> None:
        self.env = env
        self.kind = kind
        self.run_id = run_id
        self.bucket = env.config.buckets.lake
        self.prefix = f"{runs_prefix(kind)}{run_id}/"

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def put(self, name: str, value: Any) -> None:
        data = json.dumps(value, separators=(",", ":")).encode()
        self.env.store.put(self.bucket, self.prefix + name, data)

    def get(self, name: str) -> Any | None:
        """The file's JSON, or None when it does not exist."""
        try:
            with self.env.store.open(self.bucket, self.prefix + name) as stream:
                return json.loads(stream.read())
        except ObjectNotFound:
            return None

    def put_chunk(self, key: str, value: dict[str, Any]) -> None:
        self.put(f"chunks/{key}.json", value)

    def get_chunk(self, key: str) -> dict[str, Any]:
        value = self.get(f"chunks/{key}.json")
        if not isinstance(value, dict):
            raise ConfigError(
                f"backfill run {self.run_id} has no chunk {key!r}",
                hint=f"sluice backfill status {self.run_id}",
                run_id=self.run_id,
                chunk=key,
            )
        return value

    def put_result(self, result: ChunkResult) -> None:
        self.put(f"results/{result.chunk}.json", result.encode())

    def results(self) -> Iterator[ChunkResult]:
        """Every chunk's last outcome, one listing of `results/` (paginated) and one read each."""
        prefix = f"{self.prefix}results/"
        for info in self.env.store.list(self.bucket, prefix):
            name = info.key[len(prefix) :]
            if not (name.endswith(".json") and _CHUNK_KEY.fullmatch(name[: -len(".json")])):
                continue  # not ours (a temporary upload, a stray file): never fatal
            value = self.get(f"results/{name}")
            if isinstance(value, dict):
                yield ChunkResult.decode(value)


@dataclass(frozen=True)
class Manifest:
    run_id: str
    kind: Kind
    created_at: str
    total_chunks: int
    params: dict[str, Any]  # what was planned (table, source, prefix; or days and types)
    planned: dict[str, Any]  # what the plan found (keys scanned, partitions; or days)

    def encode(self) -> dict[str, Any]:
        return {
            "runId": self.run_id,
            "kind": self.kind.value,
            "createdAt": self.created_at,
            "totalChunks": self.total_chunks,
            "params": self.params,
            "planned": self.planned,
        }

    @classmethod
    def decode(cls, raw: dict[str, Any]) -> Manifest:
        return cls(
            run_id=str(raw["runId"]),
            kind=Kind(raw["kind"]),
            created_at=str(raw["createdAt"]),
            total_chunks=int(raw["totalChunks"]),
            params=dict(raw["params"]),
            planned=dict(raw["planned"]),
        )

    def chunk_keys(self) -> list[str]:
        return [chunk_key(n) for n in range(self.total_chunks)]


def open_run(env: Env, run_id: str) -> tuple[RunStore, Manifest]:
    """The files and manifest of an existing run, whatever its kind.

    Raises:
        UnknownBackfillRun: a malformed id, or no manifest under it.
    """
    if _RUN_ID.fullmatch(run_id):
        for kind in Kind:
            store = RunStore(env, kind, run_id)
            raw = store.get("manifest.json")
            if isinstance(raw, dict):
                return store, Manifest.decode(raw)
    raise UnknownBackfillRun(
        f"no backfill run {run_id!r} in s3://{env.config.buckets.lake}/{ROOT}",
        hint="`sluice backfill plan …` prints the id of the run it plans",
        run_id=run_id,
    )


@dataclass(frozen=True)
class RunStatus:
    """How far a run got. `as_json` names the counts as the CLI's `--json` does."""

    run_id: str
    kind: Kind
    location: str
    total_chunks: int
    succeeded_chunks: int
    failed_chunks: int
    pending_chunks: int  # never attempted, or interrupted while running
    failed_chunk_keys: list[str]
    errors: dict[str, str]  # failed chunk → its error message
    seconds_spent: float  # the sum of the chunks' last attempts
    first_started_at: str | None
    last_finished_at: str | None

    @property
    def done(self) -> bool:
        return self.succeeded_chunks == self.total_chunks

    def as_json(self) -> dict[str, Any]:
        return {
            "runId": self.run_id,
            "kind": self.kind.value,
            "location": self.location,
            "totalChunks": self.total_chunks,
            "succeededChunks": self.succeeded_chunks,
            "failedChunks": self.failed_chunks,
            "pendingChunks": self.pending_chunks,
            "failedChunkKeys": self.failed_chunk_keys,
            "errors": self.errors,
            "secondsSpent": self.seconds_spent,
            "firstStartedAt": self.first_started_at,
            "lastFinishedAt": self.last_finished_at,
        }


def run_status(env: Env, run_id: str) -> RunStatus:
    """Count a run's chunks by their last outcome.

    Raises:
        UnknownBackfillRun: no such run.
    """
    store, manifest = open_run(env, run_id)
    return status_of(store, manifest)


def status_of(store: RunStore, manifest: Manifest) -> RunStatus:
    planned = set(manifest.chunk_keys())
    succeeded = 0
    failed: dict[str, str] = {}
    seconds = 0.0
    first: datetime | None = None
    last: datetime | None = None
    for result in store.results():
        if result.chunk not in planned:
            continue
        seconds += result.seconds
        started = datetime.fromisoformat(result.started_at)
        first = started if first is None else min(first, started)
        finished = started.timestamp() + result.seconds
        last_ts = finished if last is None else max(last.timestamp(), finished)
        last = datetime.fromtimestamp(last_ts, UTC)
        if result.status is ChunkStatus.SUCCEEDED:
            succeeded += 1
        else:
            failed[result.chunk] = str((result.error or {}).get("message", "unknown error"))
    return RunStatus(
        run_id=manifest.run_id,
        kind=manifest.kind,
        location=store.location,
        total_chunks=manifest.total_chunks,
        succeeded_chunks=succeeded,
        failed_chunks=len(failed),
        pending_chunks=manifest.total_chunks - succeeded - len(failed),
        failed_chunk_keys=sorted(failed),
        errors=dict(sorted(failed.items())),
        seconds_spent=round(seconds, 3),
        first_started_at=None if first is None else first.isoformat(),
        last_finished_at=None if last is None else last.isoformat(),
    )
