"""What `sluice dlq` works on and reports: the queue pair, a message's validity and its failure.

A message may move back to its source queue only when it is valid (DESIGN §5): a body that is
one of sluice's kinds (or, for a foreign queue, satisfies the given schema) and a
`correlation_id` attribute. Without the attribute the worker would invent one per delivery, so
the ledger could no longer tie the redriven attempt to the failed one: such a message is refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from sluice.backends.ledger.base import FailureEvent
from sluice.backends.queue.base import Message, Queue
from sluice.env import Env
from sluice.errors import ConfigError, InvalidMessage
from sluice.messages import CORRELATION_ID, parse_body
from sluice.ops.dlq.schema import load_schema, validate

DEFAULT_LIST = 10
MAX_LIST = 50  # without --all: each message listed costs a receive and a ledger read
DEFAULT_REDRIVE_BATCH = 100
MAX_SCAN = 100_000  # an upper bound on any one scan, so a runaway queue cannot hold us forever


class Category(StrEnum):
    """Why a message sits in the DLQ, as `explain` groups them."""

    INVALID_MESSAGE = "invalid_message"
    MISSING_CORRELATION_ID = "missing_correlation_id"
    SCHEMA_FAILURE = "schema_failure"
    MISSING_RAW_OBJECT = "missing_raw_object"
    CORRUPT_RAW_OBJECT = "corrupt_raw_object"
    TRANSIENT_ERROR = "transient_error"
    TERMINAL_ERROR = "terminal_error"  # another terminal class the ledger recorded
    NO_RECORDED_FAILURE = "no_recorded_failure"


@dataclass(frozen=True)
class DlqPair:
    """A dead-letter queue, the queue its messages go back to (None: unknown), and an optional
    JSON Schema (the subset of `sluice.ops.dlq.schema`) for messages that are not sluice's."""

    dlq: Queue
    target: Queue | None = None
    schema: Mapping[str, Any] | None = None


def open_pair(
    env: Env,
    dlq: str | None = None,
    target: str | None = None,
    schema_path: Path | None = None,
) -> DlqPair:
    """The environment's DLQ and processing queue, or the queues named (names or URLs).

    With only `dlq` given, the target is the processing queue when its redrive policy names
    that DLQ, else unknown (redrive then asks for `--target-url`).

    Raises:
        QueueNotFound: a named queue does not exist.
        ConfigError: a bad schema file, or the DLQ given as its own target.
    """
    schema = None if schema_path is None else load_schema(schema_path)
    dlq_queue = env.processing_dlq if dlq is None else env.queues.open(dlq)
    target_queue: Queue | None
    if target is not None:
        target_queue = env.queues.open(target)
    elif dlq is None:
        target_queue = env.processing_queue
    else:
        policy = env.processing_queue.settings().redrive_policy
        serves = policy is not None and policy.dead_letter_queue == dlq_queue.name
        target_queue = env.processing_queue if serves else None
    if target_queue is not None and target_queue.name == dlq_queue.name:
        raise ConfigError(f"queue {dlq_queue.name!r} cannot be redriven into itself")
    return DlqPair(dlq_queue, target_queue, schema)


@dataclass(frozen=True)
class Validation:
    """Whether a message may move, and if not, why (`category` and `reason`)."""

    valid: bool
    kind: str | None
    sources: tuple[str, ...]  # s3:// URIs of the raw objects it asks for
    correlation_id: str | None
    category: Category | None = None
    reason: str | None = None
    problems: tuple[str, ...] = ()  # every schema problem, for inspect


def validate_message(message: Message, schema: Mapping[str, Any] | None = None) -> Validation:
    """Check a message's body (sluice's kinds, or `schema`) and its correlation id."""
    correlation_id = message.attributes.get(CORRELATION_ID) or None
    kind: str | None = None
    sources: tuple[str, ...] = ()
    try:
        data = json.loads(message.body)
    except ValueError as exc:
        return Validation(
            False, None, (), correlation_id, Category.INVALID_MESSAGE, f"body is not JSON: {exc}"
        )
    if isinstance(data, dict) and isinstance(data.get("kind"), str):
        kind = data["kind"]
    try:
        requests = parse_body(message.body)
        sources = tuple(str(r.uri) for r in requests)
        kind = kind or (requests[0].kind.value if requests else None)
        body_problem: str | None = None if requests else "the message asks for no object"
    except InvalidMessage as exc:
        body_problem = exc.message
    problems: tuple[str, ...] = ()
    if schema is not None:
        problems = tuple(validate(data, schema))
        if problems:
            reason = "schema: " + "; ".join(problems[:3])
            return Validation(
                False, kind, sources, correlation_id, Category.SCHEMA_FAILURE, reason, problems
            )
    elif body_problem is not None:
        return Validation(
            False, kind, sources, correlation_id, Category.INVALID_MESSAGE, body_problem
        )
    if correlation_id is None:
        reason = f"no {CORRELATION_ID!r} attribute: redriving it could process it twice"
        return Validation(
            False, kind, sources, correlation_id, Category.MISSING_CORRELATION_ID, reason
        )
    return Validation(True, kind, sources, correlation_id)


def latest_failure(
    env: Env, sources: Sequence[str], correlation_id: str | None
) -> tuple[FailureEvent | None, dict[str, list[FailureEvent]]]:
    """The failure that explains a message, and the history of each of its sources.

    The explaining failure is the latest one recorded under the message's correlation id (the
    attempt this very message made), else the latest of any source.
    """
    history: dict[str, list[FailureEvent]] = {}
    for uri in sources:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        history[uri] = env.ledger.failures(bucket, key)
    events = sorted((e for h in history.values() for e in h), key=lambda e: e.at)
    matching = [e for e in events if correlation_id and e.correlation_id == correlation_id]
    chosen = matching[-1] if matching else (events[-1] if events else None)
    return chosen, history


def categorize(validation: Validation, failure: FailureEvent | None) -> Category:
    if validation.category is not None:
        return validation.category
    if failure is None:
        return Category.NO_RECORDED_FAILURE
    if failure.error_class == "ObjectNotFound":
        return Category.MISSING_RAW_OBJECT
    if failure.error_class == "CorruptObject":
        return Category.CORRUPT_RAW_OBJECT
    return Category.TERMINAL_ERROR if failure.terminal else Category.TRANSIENT_ERROR


@dataclass(frozen=True)
class DlqMessage:
    """One message as `list` shows it."""

    message_id: str
    kind: str | None
    sources: tuple[str, ...]
    correlation_id: str | None
    receive_count: int
    sent_at: datetime
    age_seconds: float
    # Until the DLQ's retention deletes it (counted from the first send, as on SQS).
    expires_in_seconds: float
    valid: bool
    category: Category
    reason: str  # the ledger's error, or why the message itself is invalid
    failure: FailureEvent | None = None
    # FIFO queues only.
    group_id: str | None = None
    deduplication_id: str | None = None


def describe(
    env: Env, message: Message, validation: Validation, retention_seconds: int
) -> tuple[DlqMessage, dict[str, list[FailureEvent]]]:
    failure, history = latest_failure(env, validation.sources, validation.correlation_id)
    category = categorize(validation, failure)
    if validation.reason is not None:
        reason = validation.reason
    elif failure is not None:
        reason = f"{failure.error_class}: {failure.error}"
    else:
        reason = "no failure recorded in the ledger"
    age = max(0.0, (datetime.now(UTC) - message.sent_at).total_seconds())
    view = DlqMessage(
        message_id=message.message_id,
        kind=validation.kind,
        sources=validation.sources,
        correlation_id=validation.correlation_id,
        receive_count=message.receive_count,
        sent_at=message.sent_at,
        age_seconds=age,
        expires_in_seconds=max(0.0, retention_seconds - age),
        valid=validation.valid,
        category=category,
        reason=reason,
        failure=failure,
        group_id=message.group_id,
        deduplication_id=message.deduplication_id,
    )
    return view, history


@dataclass(frozen=True)
class Refused:
    """A message that stays in the DLQ, and why."""

    message_id: str
    category: str
    reason: str


@dataclass
class ScanCost:
    """What reading the queue cost: each message received once more adds one to its count."""

    receive_requests: int = 0
    messages_received: int = 0
    release_failures: list[str] = field(default_factory=list)
