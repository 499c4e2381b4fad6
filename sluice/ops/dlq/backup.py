"""`purge --backup FILE` and `restore FILE`: emptying a DLQ without losing what it held.

A backup is JSONL, one message a line: message id, body, attributes, receive count, sent time,
the queue it came from, on a FIFO queue its group and deduplication ids, and `sha256`, a
checksum of the body, attributes and group id (canonical JSON).
Purge writes it (fsync'd, then renamed into place), reads it back and compares every line with
the messages in hand, and only then deletes, message by message with the receipt it read: a
message that arrived after the read is not in the backup, so it is not deleted either. A FIFO
queue is purged in rounds (see `purge`), each backed up and verified before it is deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

from sluice.backends.queue.base import MAX_BATCH, Message, OutgoingMessage, Queue
from sluice.backends.queue.checks import is_fifo
from sluice.env import Env
from sluice.errors import ConfigError, SluiceError, TerminalError
from sluice.ops.dlq.metrics import record_metrics
from sluice.ops.dlq.model import MAX_SCAN, DlqPair, ScanCost
from sluice.ops.dlq.scan import Held, holding, receive_batches
from sluice.ops.guard import confirm_destructive

# Held invisible from the read to the last delete; if purge dies, the DLQ has them back then.
PURGE_VISIBILITY_SECONDS = 900


@dataclass(frozen=True)
class BackedUpMessage:
    message_id: str
    body: str
    attributes: dict[str, str]
    receive_count: int
    sent_at: str
    queue: str
    sha256: str
    # FIFO queues only.
    group_id: str | None = None
    deduplication_id: str | None = None


def checksum(body: str, attributes: Mapping[str, str], group_id: str | None = None) -> str:
    content: dict[str, Any] = {"body": body, "attributes": dict(attributes)}
    if group_id is not None:  # absent from a standard queue's lines, as before FIFO queues
        content["group_id"] = group_id
    canonical = json.dumps(content, sort_keys=True)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def read_backup(path: Path) -> list[BackedUpMessage]:
    """Every message of a backup, each checked against its checksum.

    Raises:
        ConfigError: unreadable, a malformed line, or a checksum that does not match.
    """
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read backup {path}: {exc.strerror}", path=str(path)) from exc
    out: list[BackedUpMessage] = []
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            raw: dict[str, Any] = json.loads(text)
            message = BackedUpMessage(
                str(raw["message_id"]),
                str(raw["body"]),
                {str(k): str(v) for k, v in dict(raw["attributes"]).items()},
                int(raw["receive_count"]),
                str(raw["sent_at"]),
                str(raw["queue"]),
                str(raw["sha256"]),
                _optional(raw.get("group_id")),
                _optional(raw.get("deduplication_id")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}:{number} is not a backup line: {exc}") from exc
        if checksum(message.body, message.attributes, message.group_id) != message.sha256:
            raise ConfigError(f"{path}:{number}: checksum mismatch (the line was changed)")
        out.append(message)
    return out


def _optional(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass
class PurgeResult:
    queue: str
    backup: Path
    dry_run: bool
    visible: int  # what the queue counted before
    backed_up: int = 0
    deleted: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # message id → why it is still there
    cost: ScanCost = field(default_factory=ScanCost)

    @property
    def ok(self) -> bool:
        return not self.failed


def purge(
    env: Env,
    pair: DlqPair,
    backup: Path,
    *,
    dry_run: bool = False,
    yes: bool = False,
    command: str | None = None,
) -> PurgeResult:
    """Back up every message of the DLQ to `backup`, verify the backup, then delete them.

    Raises:
        ConfigError: `backup` exists already (a backup is never overwritten) or its folder
            does not.
        TerminalError: the backup read back differs from the messages (nothing more deleted).
        ProtectedEnvironment: a protected environment without `yes` (nothing changed).
    """
    if backup.exists():
        raise ConfigError(
            f"backup {backup} exists; a backup is never overwritten", hint="name a new file"
        )
    if not backup.parent.is_dir():
        raise ConfigError(f"folder {backup.parent} does not exist", path=str(backup))
    visible = pair.dlq.counts().visible
    result = PurgeResult(pair.dlq.name, backup, dry_run=dry_run, visible=visible)
    plan = f"back up the {visible} message(s) of {pair.dlq.name!r} to {backup}, then delete them"
    if not confirm_destructive(env, plan, yes=yes, dry_run=dry_run, command=command):
        return result
    saved: list[Message] = []
    with holding(pair.dlq) as held:
        # A FIFO queue hands out no more of a group while a message of it is held, so a read
        # stops at the first ten of each group: rounds of read, back up, delete, until a round
        # reads nothing new. Each round rewrites the whole backup before it deletes anything.
        while fresh := _read_round(held, {m.message_id for m in saved}):
            saved += fresh
            _write(backup, [_entry(pair.dlq.name, m) for m in saved])
            _verify(backup, saved)
            for message in fresh:
                try:
                    pair.dlq.delete(message.receipt_handle)
                except SluiceError as exc:
                    result.failed[message.message_id] = exc.message
                    continue
                held.forget(message)
                result.deleted += 1
            if not is_fifo(pair.dlq.name):
                break
        result.backed_up = len(saved)
        result.cost = held.cost
    counts = {"backed_up": result.backed_up, "deleted": result.deleted}
    record_metrics(env, "purge", {**counts, "failed": len(result.failed)}, queue=pair.dlq.name)
    return result


def _read_round(held: Held, saved: set[str]) -> list[Message]:
    """Receive what the queue hands out now; the messages held and not backed up yet."""
    for _ in receive_batches(held, limit=MAX_SCAN, visibility=PURGE_VISIBILITY_SECONDS):
        pass
    return [m for m in held.messages.values() if m.message_id not in saved]


def _entry(queue: str, message: Message) -> BackedUpMessage:
    return BackedUpMessage(
        message.message_id,
        message.body,
        dict(message.attributes),
        message.receive_count,
        message.sent_at.astimezone(UTC).isoformat(),
        queue,
        checksum(message.body, message.attributes, message.group_id),
        message.group_id,
        message.deduplication_id,
    )


def _write(path: Path, entries: Sequence[BackedUpMessage]) -> None:
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", encoding="utf-8") as out:
        for entry in entries:
            out.write(json.dumps(entry.__dict__, ensure_ascii=True) + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    # The rename is durable only once the folder is synced too.
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _verify(path: Path, messages: Sequence[Message]) -> None:
    written = {m.message_id: m.sha256 for m in read_backup(path)}
    expected = {m.message_id: checksum(m.body, m.attributes, m.group_id) for m in messages}
    if written != expected:
        raise TerminalError(
            f"backup {path} does not match the {len(messages)} message(s) read; nothing deleted",
            path=str(path),
        )


@dataclass
class RestoreResult:
    backup: Path
    queue: str
    dry_run: bool
    messages: int
    sent: dict[str, str] = field(default_factory=dict)  # backed-up id → new message id
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


def restore(
    env: Env,
    backup: Path,
    queue: Queue,
    *,
    dry_run: bool = False,
    yes: bool = False,
    command: str | None = None,
) -> RestoreResult:
    """Send every message of a backup to `queue`, body, attributes and group id as they were.

    Restoring the same backup twice sends every message twice (new message ids), except to a
    FIFO queue within its deduplication window (5 minutes), which takes each message once.

    Raises:
        ConfigError: the backup is unreadable or fails its checksums, or holds messages of a
            FIFO queue for a standard one or the reverse (nothing sent).
        ProtectedEnvironment: a protected environment without `yes` (nothing sent).
    """
    entries = read_backup(backup)
    _check_kind(backup, entries, queue)
    result = RestoreResult(backup, queue.name, dry_run=dry_run, messages=len(entries))
    plan = f"send the {len(entries)} message(s) of {backup} to {queue.name!r}"
    if not confirm_destructive(env, plan, yes=yes, dry_run=dry_run, command=command):
        return result
    for chunk in _batches(entries):
        outgoing = [_outgoing(str(i), e) for i, e in chunk]
        try:
            answer = queue.send_batch(outgoing)
        except SluiceError as exc:
            result.failed.update({e.message_id: exc.message for _, e in chunk})
            continue
        for i, entry in chunk:
            if str(i) in answer.sent:
                result.sent[entry.message_id] = answer.sent[str(i)]
            else:
                result.failed[entry.message_id] = answer.failed.get(str(i), "not confirmed")
    counts = {"restored": len(result.sent), "failed": len(result.failed)}
    record_metrics(env, "restore", counts, queue=queue.name)
    return result


def _check_kind(backup: Path, entries: Sequence[BackedUpMessage], queue: Queue) -> None:
    """Raises:
    ConfigError: messages with group ids for a standard queue, or without for a FIFO one."""
    fifo = is_fifo(queue.name)
    mismatched = [e.message_id for e in entries if (e.group_id is None) == fifo]
    if mismatched:
        kind, other = ("FIFO", "standard") if fifo else ("standard", "FIFO")
        raise ConfigError(
            f"{backup} holds {len(mismatched)} message(s) of a {other} queue; {queue.name!r} is"
            f" a {kind} queue",
            hint=f"restore it to a {other} queue (--to-url)",
            queue=queue.name,
            message_ids=mismatched[:10],
        )


def _outgoing(entry_id: str, entry: BackedUpMessage) -> OutgoingMessage:
    if entry.group_id is None:
        return OutgoingMessage(entry.body, entry.attributes, entry_id=entry_id)
    # Not the backed-up deduplication id: the queue may remember it for 5 minutes after the
    # message was sent (or moved) there, and would then accept the restored message and drop
    # it. One of its own, the same for every restore of this line, keeps a restore that is run
    # again within the window from sending the message twice.
    return OutgoingMessage(
        entry.body,
        entry.attributes,
        entry_id=entry_id,
        group_id=entry.group_id,
        deduplication_id=f"restored-{entry.message_id}",
    )


def _batches(entries: Sequence[BackedUpMessage]) -> Iterator[list[tuple[int, BackedUpMessage]]]:
    for start in range(0, len(entries), MAX_BATCH):
        yield list(enumerate(entries[start : start + MAX_BATCH]))
