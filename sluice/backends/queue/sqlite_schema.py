"""The embedded queue's database layout: the tables and indexes every queue of an environment
shares (`SCHEMA`), the columns `add_missing_columns` adds to a database made before FIFO queues,
`load_settings`, which reads a queue's row of `queues` as its `QueueSettings`, and the two
queries that find a queue's visible messages (`SELECT_VISIBLE`, `SELECT_VISIBLE_FIFO`), written
for the indexes they scan.
"""

from __future__ import annotations

import sqlite3

from sluice.backends.queue.base import QueueSettings, RedrivePolicy
from sluice.backends.sqlite import SqliteDb
from sluice.errors import QueueNotFound

SCHEMA = """
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY,
    visibility_timeout INTEGER NOT NULL,
    retention_seconds INTEGER NOT NULL,
    dead_letter_queue TEXT,
    max_receive_count INTEGER
);
CREATE TABLE IF NOT EXISTS queue_messages (
    seq INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    message_id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL,
    attributes TEXT NOT NULL,
    sent_at REAL NOT NULL,
    visible_at REAL NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt_handle TEXT UNIQUE
);
CREATE INDEX IF NOT EXISTS queue_messages_by_age ON queue_messages (queue, sent_at, visible_at);
CREATE TABLE IF NOT EXISTS queue_deduplication (
    queue TEXT NOT NULL,
    deduplication_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    sent_at REAL NOT NULL,
    PRIMARY KEY (queue, deduplication_id)
)
"""

# The columns FIFO queues brought: added where missing, so a database made before them opens.
_ADDED_COLUMNS = {
    "queues": (
        "fifo INTEGER NOT NULL DEFAULT 0",
        "content_based_deduplication INTEGER NOT NULL DEFAULT 0",
    ),
    "queue_messages": ("group_id TEXT", "deduplication_id TEXT"),
}
# Finds a group's messages in flight; standard queues' messages have no group, so no entry.
_GROUP_INDEX = """
CREATE INDEX IF NOT EXISTS queue_messages_by_group ON queue_messages (queue, group_id, visible_at)
WHERE group_id IS NOT NULL
"""

_COLUMNS = "seq, message_id, body, attributes, sent_at, receive_count, group_id, deduplication_id"
# The index holds (queue, sent_at, visible_at, seq): receiving scans it oldest first (sorting only
# messages sent in the same instant), counting and expiring read nothing else.
SELECT_VISIBLE = f"""
SELECT {_COLUMNS} FROM queue_messages
WHERE queue = :queue AND sent_at >= :cutoff AND visible_at <= :now
ORDER BY sent_at, seq LIMIT :limit
"""
# FIFO: in send order (seq), skipping every group with a message in flight.
SELECT_VISIBLE_FIFO = f"""
SELECT {_COLUMNS} FROM queue_messages AS m
WHERE queue = :queue AND sent_at >= :cutoff AND visible_at <= :now AND NOT EXISTS (
    SELECT 1 FROM queue_messages AS busy
    WHERE busy.queue = m.queue AND busy.group_id = m.group_id
    AND busy.visible_at > :now AND busy.sent_at >= :cutoff
)
ORDER BY seq LIMIT :limit
"""


def load_settings(conn: sqlite3.Connection, name: str) -> QueueSettings:
    rows = conn.execute("SELECT * FROM queues WHERE name = ?", (name,)).fetchall()
    if not rows:
        raise QueueNotFound(f"queue {name!r} does not exist", queue=name)
    row = rows[0]
    policy = None
    if row["dead_letter_queue"] is not None:
        policy = RedrivePolicy(row["dead_letter_queue"], row["max_receive_count"])
    return QueueSettings(
        visibility_timeout_seconds=row["visibility_timeout"],
        retention_seconds=row["retention_seconds"],
        redrive_policy=policy,
        fifo=bool(row["fifo"]),
        content_based_deduplication=bool(row["content_based_deduplication"]),
    )


def add_missing_columns(db: SqliteDb) -> None:
    # One write transaction: two processes opening an old database add each column once.
    with db.write() as conn:
        for table, columns in _ADDED_COLUMNS.items():
            present = {row["name"] for row in conn.execute(f"PRAGMA table_info({table})")}
            for column in columns:
                if column.split()[0] not in present:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
        conn.execute(_GROUP_INDEX)
