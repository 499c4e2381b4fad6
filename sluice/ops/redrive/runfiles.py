"""Where a redrive run keeps its progress: JSON files in the environment's `lake` bucket.

    redrive/runs/<run-id>/manifest.json            the plan: target, options, counts
    redrive/runs/<run-id>/chunks/chunk-00000.json  sources, each with its fixed redrive id
    redrive/runs/<run-id>/results/chunk-00000.json how much of that chunk was sent
    redrive/runs/<run-id>/targets/chunk-00000.json files to delete first (--delete-parquet)
    redrive/runs/<run-id>/deleted/chunk-00000.json written once that chunk is deleted
    redrive/runs/<run-id>/orphans/chunk-00000.json files to remove once the sources are done
    redrive/runs/<run-id>/finish.json              what the last finish did

The `lake` bucket is sluice's own working space (the Iceberg warehouse lives there too): the
verified bucket holds only verified files, which the catalog and `repair` read, and the raw
bucket is never written by an operator's command. Every file is written once and never
changed, except a chunk's result, which grows as the chunk is sent; the manifest is written
last, so a run without one was refused while planning and does not exist.
"""

from __future__ import annotations

import json
import re
import secrets
from datetime import UTC, datetime
from typing import Any

from sluice.env import Env
from sluice.errors import ObjectNotFound
from sluice.ops.redrive.model import UnknownRun

RUNS_PREFIX = "redrive/runs/"
_RUN_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6}")
KINDS = ("chunks", "results", "targets", "deleted", "orphans")


def new_run_id(now: datetime | None = None) -> str:
    """Sortable by creation time, unique: `20251124T210935Z-3fa9c1`."""
    t = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{t:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


class RunFiles:
    """The files of one run."""

    def __init__(self, env: Env, run_id: str) -> None:
        self.env = env
        self.run_id = run_id
        self.bucket = env.config.buckets.lake
        self.prefix = f"{RUNS_PREFIX}{run_id}/"
        self.written: list[str] = []  # keys written by this process, for a refused plan

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def key(self, name: str) -> str:
        return self.prefix + name

    @staticmethod
    def chunk_name(kind: str, number: int) -> str:
        assert kind in KINDS, kind
        return f"{kind}/chunk-{number:05d}.json"

    def put(self, name: str, value: Any) -> None:
        key = self.key(name)
        self.env.store.put(self.bucket, key, json.dumps(value, separators=(",", ":")).encode())
        self.written.append(key)

    def get(self, name: str) -> Any | None:
        """The file's JSON, or None when it does not exist."""
        try:
            with self.env.store.open(self.bucket, self.key(name)) as stream:
                return json.loads(stream.read())
        except ObjectNotFound:
            return None

    def put_chunk(self, kind: str, number: int, value: Any) -> None:
        self.put(self.chunk_name(kind, number), value)

    def get_chunk(self, kind: str, number: int) -> Any | None:
        return self.get(self.chunk_name(kind, number))

    def discard(self) -> None:
        """Delete what this process wrote (a plan refused before it became a run)."""
        for start in range(0, len(self.written), 1000):
            self.env.store.delete_batch(self.bucket, self.written[start : start + 1000])
        self.written = []


def open_run(env: Env, run_id: str) -> tuple[RunFiles, dict[str, Any]]:
    """The files and manifest of an existing run.

    Raises:
        UnknownRun: a malformed id, or no manifest under it (the hint lists recent runs).
    """
    files = RunFiles(env, run_id) if _RUN_ID.fullmatch(run_id) else None
    manifest = files.get("manifest.json") if files is not None else None
    if files is None or manifest is None:
        recent = recent_runs(env)
        raise UnknownRun(
            f"no redrive run {run_id!r} in s3://{env.config.buckets.lake}/{RUNS_PREFIX}",
            hint="recent runs: " + ", ".join(recent) if recent else "there are no redrive runs",
            run_id=run_id,
        )
    return files, manifest


def recent_runs(env: Env, count: int = 5, scan: int = 1000) -> list[str]:
    """The ids of the newest runs (ids sort by creation time), looking at `scan` runs at most.

    One listing request per run: each skips the rest of the run's files with `start_after`.
    """
    ids: list[str] = []
    after = ""
    for _ in range(scan):
        info = next(
            iter(
                env.store.list(env.config.buckets.lake, RUNS_PREFIX, start_after=after, page_size=1)
            ),
            None,
        )
        if info is None:
            break
        run_id = info.key[len(RUNS_PREFIX) :].split("/", 1)[0]
        ids = [*ids[-(count - 1) :], run_id] if count > 1 else [run_id]
        after = f"{RUNS_PREFIX}{run_id}/\U0010ffff"
    return list(reversed(ids))
