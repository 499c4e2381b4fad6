"""The SQLite ledger's tables and how their rows read back: `SCHEMA` creates the four tables
(``files``, one record per raw object; ``redrives``, the redrive ids done per object;
``failures``, the failure history; ``receipts``, what ingest wrote) and their indexes; times are
stored as integer microseconds since the epoch (`to_us`, `from_us`: exact round trip, orders
correctly) and read back as aware UTC datetimes; `record` and `receipt` turn a row into a
`FileRecord` or a `Receipt`.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta

import msgspec

from sluice.backends.ledger.base import Counts, FileRecord, FileStatus, Output, Receipt

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    etag TEXT NOT NULL,
    status TEXT NOT NULL,
    version INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    owner TEXT,
    token TEXT,
    lease_expires_at INTEGER,
    last_error TEXT,
    error_class TEXT,
    terminal INTEGER NOT NULL DEFAULT 0,
    outputs TEXT NOT NULL DEFAULT '[]',
    pending_outputs TEXT NOT NULL DEFAULT '[]',
    counts TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    completed_at INTEGER,
    PRIMARY KEY (bucket, key)
);
CREATE INDEX IF NOT EXISTS files_by_update ON files (updated_at, bucket, key);
CREATE INDEX IF NOT EXISTS files_by_status ON files (status, updated_at, bucket, key);
CREATE TABLE IF NOT EXISTS redrives (
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    redrive_id TEXT NOT NULL,
    done_at INTEGER NOT NULL,
    PRIMARY KEY (bucket, key, redrive_id)
);
CREATE TABLE IF NOT EXISTS failures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    etag TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    error_class TEXT NOT NULL,
    error TEXT NOT NULL,
    terminal INTEGER NOT NULL,
    correlation_id TEXT,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS failures_by_source ON failures (bucket, key, id);
CREATE TABLE IF NOT EXISTS receipts (
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    lines INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (bucket, key)
)
"""


def to_us(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - EPOCH) // _MICROSECOND


def from_us(value: int | None) -> datetime | None:
    return None if value is None else EPOCH + timedelta(microseconds=value)


def record(row: sqlite3.Row) -> FileRecord:
    counts = row["counts"]
    return FileRecord(
        bucket=row["bucket"],
        key=row["key"],
        etag=row["etag"],
        status=FileStatus(row["status"]),
        attempts=row["attempts"],
        owner=row["owner"],
        lease_expires_at=from_us(row["lease_expires_at"]),
        last_error=row["last_error"],
        error_class=row["error_class"],
        terminal=bool(row["terminal"]),
        outputs=msgspec.json.decode(row["outputs"], type=tuple[Output, ...]),
        pending_outputs=msgspec.json.decode(row["pending_outputs"], type=tuple[str, ...]),
        counts=None if counts is None else msgspec.json.decode(counts, type=Counts),
        created_at=EPOCH + timedelta(microseconds=row["created_at"]),
        updated_at=EPOCH + timedelta(microseconds=row["updated_at"]),
        completed_at=from_us(row["completed_at"]),
    )


def receipt(row: sqlite3.Row) -> Receipt:
    return Receipt(
        bucket=row["bucket"],
        key=row["key"],
        lines=row["lines"],
        bytes=row["bytes"],
        received_at=EPOCH + timedelta(microseconds=row["received_at"]),
    )
