"""The ledger and file registry on DynamoDB (the AWS backend), through the low-level client.

One table, one partition per raw object (``pk = "file#s3://bucket/key"``), several item kinds
under it (``sk``)::

    sk = "file"                             the record: status, etag, attempts, owner, token,
                                            lease, outputs, pending outputs, counts, version
    sk = "redrive#<sha256 of the id>"       a redrive id completed for this object
    sk = "failure#<at>#<attempt>#<token>"   one failed attempt (sorts oldest first)
    sk = "receipt"                          what ingest wrote into the object

Every write to the record increments ``version``. A claim reads the record, decides exactly as
the SQLite ledger does, then writes only over the state it decided on (``attribute_not_exists``
for a new object, ``version = :read`` otherwise); the holder's verbs write only while its claim
is held (``token = :token AND status = :processing``). Times are integer microseconds since the
epoch, compared on the ledger's clock (``clock``), never DynamoDB's.

Differs from the interface in what it adds and in honest limits:

- ``clock`` makes "now" injectable; ``create_table()`` creates the table (idempotent) from
  `table_definition`, which the SAM template uses too.
- ``list`` and ``receipts`` read global secondary indexes, which are eventually consistent: a
  write shows up there a moment later (``get`` and ``failures`` read consistently). Records
  updated in the same microsecond come back in no particular order.
- Outputs and pending outputs live in the record, as zlib-compressed JSON (an output compresses
  to a few bytes: tens of thousands fit). Items of their own would make ``complete`` a
  multi-item transaction, capped at 100 items; instead outputs that do not fit the 400 KB item
  limit fail ``complete`` (or ``record_pending_outputs``) with a `TerminalError` that says so.
- An error text is kept up to `MAX_ERROR_CHARS` (then cut, with a marker), so that recording a
  failure never fails on the item limit itself.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import hashlib
import heapq
import itertools
import re
import secrets
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from botocore.exceptions import ClientError, HTTPClientError, NoCredentialsError
from botocore.exceptions import ConnectionError as BotoConnectionError

from sluice.backends.ledger.base import (
    Claim,
    ClaimOutcome,
    ClaimResult,
    Counts,
    FailureEvent,
    FileRecord,
    FileStatus,
    Output,
    Receipt,
    SourceRef,
)
from sluice.errors import BackendBusy, ConfigError, LeaseLost, SluiceError, TerminalError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

PAGE_SIZE = 500
STATUS_INDEX = "by_status"  # status (hash) + updated_at (range): list by status and age
RECEIPT_INDEX = "receipts"  # receipt_index (hash, only on receipts) + received_at (range)
# Room for outputs and pending outputs once keys, errors and counts take their share of the
# 400 KB item limit.
MAX_BLOB_BYTES = 300_000
MAX_ERROR_CHARS = 8_000  # at most 32 KB of UTF-8, on the record and on its failure event
# How often a claim (or a pending-outputs merge) re-reads and retries after losing its
# conditional write before it reports BackendBusy.
_TRIES = 5

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_TIMES = frozenset(
    {"at", "created_at", "updated_at", "completed_at", "lease_expires_at", "received_at", "done_at"}
)
_PROCESSING = FileStatus.PROCESSING.value
_RECORD_SK = "file"
_RECEIPT_SK = "receipt"
_TRANSIENT_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
        "TransactionConflictException",
        "TransactionInProgressException",
    }
)
_TRANSIENT_REASONS = {"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"}
# A write by the claim's holder goes through only while the claim is still held. An expired
# lease that nobody took over is still held: the token, not the clock, decides.
_HELD = "#token = :token AND #status = :processing"

Item = dict[str, Any]
Plain = str | int | bool | bytes
T = TypeVar("T", bound="DataclassInstance")


class _Refused(Exception):
    """A write refused for the state it found (a condition that did not hold, a table that
    already exists); callers always catch it, it never leaves the module."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _to_us(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _MICROSECOND


def _at(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _pk(bucket: str, key: str) -> str:
    # A bucket name holds no "/", so the URI names exactly one (bucket, key).
    return f"file#s3://{bucket}/{key}"


def _key(bucket: str, key: str, sk: str) -> Item:
    return {"pk": {"S": _pk(bucket, key)}, "sk": {"S": sk}}


def _redrive_sk(redrive_id: str) -> str:
    # Hashed: an id may be any string (the contract tests use 1.5 KB ones), a sort key holds
    # at most 1 KB. The id itself is kept on the marker for people reading the table.
    return "redrive#" + hashlib.sha256(redrive_id.encode()).hexdigest()


def _av(value: Plain) -> Item:
    """A plain value as a DynamoDB attribute value."""
    if isinstance(value, bool):  # before int: a bool is an int
        return {"BOOL": value}
    if isinstance(value, int):
        return {"N": str(value)}
    return {"B": value} if isinstance(value, bytes) else {"S": value}


def _item(bucket: str, key: str, sk: str, /, **values: Plain | None) -> Item:
    """An item under the object's partition, which names it too; None values are left out."""
    values = {"bucket": bucket, "key": key, **values}
    return {**_key(bucket, key, sk), **{k: _av(v) for k, v in values.items() if v is not None}}


def _plain(item: Item) -> dict[str, Any]:
    """An item's attribute values as plain ones (the inverse of `_av`; times as datetimes)."""
    out: dict[str, Any] = {}
    for name, value in item.items():
        ((kind, raw),) = value.items()
        if kind == "N":
            raw = _at(int(raw)) if name in _TIMES else int(raw)
        out[name] = raw
    return out


def _build(cls: type[T], plain: Mapping[str, Any], **decoded: Any) -> T:
    """A dataclass from attributes named as its fields (an absent one is None)."""
    fields = (f.name for f in dataclasses.fields(cls))
    return cls(**{name: decoded.get(name, plain.get(name)) for name in fields})


def _blob(values: tuple[Any, ...]) -> bytes:
    return zlib.compress(msgspec.json.encode(values))


def _unblob(blob: bytes | None, kind: Any) -> Any:
    return () if blob is None else msgspec.json.decode(zlib.decompress(blob), type=kind)


def _record(item: Item) -> FileRecord:
    p = _plain(item)
    counts = p.get("counts")
    return _build(
        FileRecord,
        p,
        status=FileStatus(p["status"]),
        outputs=_unblob(p.get("outputs"), tuple[Output, ...]),
        pending_outputs=_unblob(p.get("pending_outputs"), tuple[str, ...]),
        counts=None if counts is None else msgspec.json.decode(counts, type=Counts),
    )


def _check_size(source: SourceRef, *blobs: bytes) -> None:
    size = sum(map(len, blobs))
    if size > MAX_BLOB_BYTES:
        raise TerminalError(
            f"the outputs of {source.uri} take {size} bytes compressed, over the"
            f" {MAX_BLOB_BYTES} bytes a DynamoDB ledger record can hold",
            source_ref=source.uri,
            hint="split the raw object into smaller ones, or use the embedded ledger",
        )


def _expr(
    values: Mapping[str, Plain], update: str = "", condition: str = "", *, key: str = ""
) -> Item:
    """Request arguments for expressions that write every attribute name as ``#name`` and
    every value as ``:name`` (`values` by name). Names are collected from the expressions:
    DynamoDB rejects unused ones, and ``status``, ``key``, ``token`` are reserved words."""
    args: Item = {}
    for arg, text in (
        ("UpdateExpression", update),
        ("ConditionExpression", condition),
        ("KeyConditionExpression", key),
    ):
        if text:
            args[arg] = text
    names = sorted(set(re.findall(r"#(\w+)", f"{update} {condition} {key}")))
    if names:
        args["ExpressionAttributeNames"] = {f"#{name}": name for name in names}
    if values:
        args["ExpressionAttributeValues"] = {f":{name}": _av(v) for name, v in values.items()}
    return args


def _key_schema(hash_key: str, range_key: str) -> list[Item]:
    return [
        {"AttributeName": hash_key, "KeyType": "HASH"},
        {"AttributeName": range_key, "KeyType": "RANGE"},
    ]


def table_definition(table: str) -> Item:
    """The table as CreateTable arguments (also the CloudFormation properties): on-demand
    billing, the key schema above and the two indexes `list` and `receipts` query."""
    types = {
        "pk": "S",
        "sk": "S",
        "status": "S",
        "updated_at": "N",
        "receipt_index": "S",
        "received_at": "N",
    }
    indexes = [
        (STATUS_INDEX, "status", "updated_at"),
        (RECEIPT_INDEX, "receipt_index", "received_at"),
    ]
    return {
        "TableName": table,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": n, "AttributeType": t} for n, t in types.items()
        ],
        "KeySchema": _key_schema("pk", "sk"),
        # All records of one status share an index key: DynamoDB splits it for heat by the sort
        # key, and each status change stands for a whole raw object, so the index stays far
        # below what one key can take.
        "GlobalSecondaryIndexes": [
            {
                "IndexName": name,
                "Projection": {"ProjectionType": "ALL"},
                "KeySchema": _key_schema(h, r),
            }
            for name, h, r in indexes
        ],
    }


class DynamoDbLedger:
    """`Ledger` in one DynamoDB table, shared by any number of workers and machines.

    `client` is a low-level boto3 DynamoDB client (from `sluice.backends.aws.AwsClients`).
    """

    def __init__(
        self, client: Any, table: str, *, clock: Callable[[], datetime] = _utc_now
    ) -> None:
        self._client = client
        self.table = table
        self._clock = clock

    def create_table(self) -> None:
        """Create the table and its indexes (`table_definition`); nothing if it exists."""
        try:
            answer = self._call("create_table", **table_definition(self.table))
            active = answer["TableDescription"].get("TableStatus") == "ACTIVE"
        except _Refused:
            active = False  # it exists already (perhaps still being created)
        if not active:
            self._client.get_waiter("table_exists").wait(TableName=self.table)

    # Claims ------------------------------------------------------------------------------

    def claim(
        self,
        source: SourceRef,
        owner: str,
        lease_seconds: float,
        *,
        force: bool = False,
        redrive_id: str | None = None,
    ) -> ClaimResult:
        now = self._clock()
        lease = now + timedelta(seconds=lease_seconds)
        token = secrets.token_hex(16)
        for _ in range(_TRIES):
            item, redrive_done = self._read_for_claim(source, redrive_id)
            current = None if item is None else _record(item)
            if item is not None and _plain(item).get("token") == token:
                # Our own write, applied by a request whose answer was lost and then retried.
                return self._claimed(source, owner, token, lease, item)
            if redrive_done:
                return ClaimResult(ClaimOutcome.REDRIVE_DONE, record=current)
            same = current is not None and current.etag == source.etag
            if current is not None:
                # Any unexpired lease blocks, whoever holds it: claim() carries no token, so
                # even the same owner asking again is a second, concurrent claim.
                if current.status is FileStatus.PROCESSING and not current.is_stuck(now):
                    return ClaimResult(ClaimOutcome.BUSY, record=current)
                if current.status is FileStatus.COMPLETED and same and not force:
                    return ClaimResult(ClaimOutcome.ALREADY_COMPLETED, record=current)
            # A changed object is a new input: its attempts count from one. Its old outputs
            # stay on the record until complete() replaces them.
            values: dict[str, Plain] = {
                "bucket": source.bucket,
                "key": source.key,
                "etag": source.etag,
                "status": _PROCESSING,
                "owner": owner,
                "token": token,
                "lease_expires_at": _to_us(lease),
                "updated_at": _to_us(now),
                "attempts": current.attempts + 1 if current is not None and same else 1,
            }
            update = "SET " + ", ".join(f"#{name} = :{name}" for name in values)
            update += (
                ", #created_at = if_not_exists(#created_at, :updated_at)"
                ", #terminal = if_not_exists(#terminal, :false)"
                ", #version = if_not_exists(#version, :zero) + :one"
            )
            # Write only over the state decided on: create the record if it is still absent,
            # else update it if nobody wrote since our read. Of concurrent claims, one wins.
            condition = "attribute_not_exists(#pk)"
            if item is not None:
                condition = "#version = :read"
                values["read"] = _plain(item)["version"]
            try:
                answer = self._call(
                    "update_item",
                    TableName=self.table,
                    Key=_key(source.bucket, source.key, _RECORD_SK),
                    ReturnValues="ALL_NEW",
                    **_expr({**values, "false": False, "zero": 0, "one": 1}, update, condition),
                )
            except _Refused:
                continue  # someone wrote since our read: decide again on their write
            return self._claimed(source, owner, token, lease, answer["Attributes"])
        raise BackendBusy("claim kept losing races; retry", source_ref=source.uri)

    def extend(self, claim: Claim, lease_seconds: float) -> Claim:
        now = self._clock()
        lease = now + timedelta(seconds=lease_seconds)
        self._write_held(claim, _to_us(now), {"lease_expires_at": _to_us(lease)})
        return dataclasses.replace(claim, lease_expires_at=lease)

    def record_pending_outputs(self, claim: Claim, keys: Sequence[str]) -> None:
        source = claim.source
        for _ in range(_TRIES):
            item = self._get_item(source.bucket, source.key, _RECORD_SK)
            p = {} if item is None else _plain(item)
            if p.get("token") != claim.token or p.get("status") != _PROCESSING:
                raise self._lost(claim)
            # A union (first appearance kept), so several calls during one run, and runs that
            # died, all stay remembered.
            old = p.get("pending_outputs")
            blob = _blob(tuple(dict.fromkeys((*_unblob(old, tuple[str, ...]), *keys))))
            _check_size(source, blob, p.get("outputs", b""))
            # Read-modify-write, only while the pending keys are still the ones merged into:
            # not the version, which the heartbeat's extend() bumps every few seconds.
            guard: tuple[str, dict[str, Plain]] = ("attribute_not_exists(#pending_outputs)", {})
            if old is not None:
                guard = ("#pending_outputs = :old", {"old": old})
            try:
                now_us = _to_us(self._clock())
                self._write_held(claim, now_us, {"pending_outputs": blob}, guard=guard)
            except LeaseLost:
                continue  # re-read: lost for good, or another merge came first
            return
        raise BackendBusy("pending outputs kept losing races; retry", source_ref=source.uri)

    def complete(
        self,
        claim: Claim,
        outputs: Sequence[Output],
        counts: Counts,
        *,
        redrive_id: str | None = None,
    ) -> FileRecord:
        source = claim.source
        blob = _blob(tuple(outputs))
        _check_size(source, blob)
        now_us = _to_us(self._clock())
        sets: dict[str, Plain] = {
            "status": FileStatus.COMPLETED.value,
            "outputs": blob,
            "terminal": False,
            "counts": msgspec.json.encode(counts).decode(),
            "completed_at": now_us,
        }
        cleared = ("pending_outputs", "last_error", "error_class", "token", "lease_expires_at")
        if redrive_id is None:
            return _record(self._write_held(claim, now_us, sets, remove=cleared))
        # Completing and marking the redrive done are one transaction: a redelivery of the
        # redrive finds both or neither. The marker is a plain Put (no condition), since the
        # same id may be completed again after a claim made without it.
        marker = _item(
            source.bucket,
            source.key,
            _redrive_sk(redrive_id),
            redrive_id=redrive_id,
            done_at=now_us,
        )
        return self._held_transaction(
            claim, self._held_update(claim, now_us, sets, remove=cleared), marker
        )

    def fail(
        self,
        claim: Claim,
        error: str,
        error_class: str,
        *,
        terminal: bool,
        correlation_id: str | None = None,
    ) -> FileRecord:
        source = claim.source
        now_us = _to_us(self._clock())
        if len(error) > MAX_ERROR_CHARS:
            cut = len(error) - MAX_ERROR_CHARS
            error = f"{error[:MAX_ERROR_CHARS]}... [{cut} more characters cut]"
        sets: dict[str, Plain] = {
            "status": FileStatus.FAILED.value,
            "last_error": error,
            "error_class": error_class,
            "terminal": terminal,
        }
        update = self._held_update(claim, now_us, sets, remove=("token", "lease_expires_at"))
        # While the claim is held the record's ETag and attempts are the claim's. The token in
        # the sort key keeps two failures in the same microsecond (a changed ETag restarts
        # attempts at 1) from overwriting each other.
        sk = f"failure#{now_us:020d}#{claim.attempt:010d}#{claim.token}"
        event = _item(
            source.bucket,
            source.key,
            sk,
            etag=source.etag,
            attempt=claim.attempt,
            error_class=error_class,
            error=error,
            terminal=terminal,
            correlation_id=correlation_id,
            at=now_us,
        )
        return self._held_transaction(claim, update, event)

    def reset(self, bucket: str, key: str) -> FileRecord | None:
        values: dict[str, Plain] = {"pending": FileStatus.PENDING.value, "one": 1}
        values["now"] = _to_us(self._clock())
        update = (
            "SET #status = :pending, #updated_at = :now, #version = #version + :one"
            " REMOVE #owner, #token, #lease_expires_at"
        )
        try:
            # Only an existing record: an update would otherwise create a bare one.
            answer = self._call(
                "update_item",
                TableName=self.table,
                Key=_key(bucket, key, _RECORD_SK),
                ReturnValues="ALL_NEW",
                **_expr(values, update, "attribute_exists(#pk)"),
            )
        except _Refused:
            return None
        return _record(answer["Attributes"])

    # Reads -------------------------------------------------------------------------------

    def get(self, bucket: str, key: str) -> FileRecord | None:
        item = self._get_item(bucket, key, _RECORD_SK)
        return None if item is None else _record(item)

    def list(
        self,
        *,
        status: FileStatus | None = None,
        updated_before: datetime | None = None,
        limit: int | None = None,
    ) -> Iterator[FileRecord]:
        if limit is not None and limit <= 0:
            return
        statuses = list(FileStatus) if status is None else [FileStatus(status)]
        # Each status is one index partition already sorted by update time: merge them lazily.
        streams = [self._by_status(s, updated_before, limit) for s in statuses]
        merged = heapq.merge(*streams, key=lambda r: (r.updated_at, r.bucket, r.key))
        yield from itertools.islice(merged, limit)

    def failures(self, bucket: str, key: str) -> builtins.list[FailureEvent]:
        values = {"pk": _pk(bucket, key), "failure": "failure#"}
        condition = "#pk = :pk AND begins_with(#sk, :failure)"
        items = self._query(ConsistentRead=True, **_expr(values, key=condition))
        return [_build(FailureEvent, _plain(item)) for item in items]

    # Receipts ----------------------------------------------------------------------------

    def record_receipt(self, receipt: Receipt) -> None:
        item = _item(
            receipt.bucket,
            receipt.key,
            _RECEIPT_SK,
            receipt_index=_RECEIPT_SK,
            lines=receipt.lines,
            bytes=receipt.bytes,
            received_at=_to_us(receipt.received_at),
        )
        # The first receipt of an object wins; a replayed one changes nothing.
        with contextlib.suppress(_Refused):
            condition = _expr({}, condition="attribute_not_exists(#pk)")
            self._call("put_item", TableName=self.table, Item=item, **condition)

    def get_receipt(self, bucket: str, key: str) -> Receipt | None:
        item = self._get_item(bucket, key, _RECEIPT_SK)
        return None if item is None else _build(Receipt, _plain(item))

    def receipts(self) -> Iterator[Receipt]:
        condition = _expr({"r": _RECEIPT_SK}, key="#receipt_index = :r")
        items = self._query(IndexName=RECEIPT_INDEX, Limit=PAGE_SIZE, **condition)
        yield from (_build(Receipt, _plain(item)) for item in items)

    # Helpers -----------------------------------------------------------------------------

    def _by_status(
        self, status: FileStatus, before: datetime | None, limit: int | None
    ) -> Iterator[FileRecord]:
        values: dict[str, Plain] = {"status": status.value}
        condition = "#status = :status"
        if before is not None:
            values["before"] = _to_us(before)
            condition += " AND #updated_at < :before"
        size = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit)
        items = self._query(IndexName=STATUS_INDEX, Limit=size, **_expr(values, key=condition))
        yield from map(_record, items)

    def _query(self, **args: Any) -> Iterator[Item]:
        """Every item a Query matches, a page at a time (lazily)."""
        while True:
            answer = self._call("query", TableName=self.table, **args)
            yield from answer.get("Items", [])
            if "LastEvaluatedKey" not in answer:
                return
            args["ExclusiveStartKey"] = answer["LastEvaluatedKey"]

    def _read_for_claim(
        self, source: SourceRef, redrive_id: str | None
    ) -> tuple[Item | None, bool]:
        """The record, then whether `redrive_id` is done for it.

        Two consistent reads in this order need no transaction (which a concurrent complete()
        could cancel): a marker is only written together with a new version of the record, so
        one written after the first read makes the claim's `version = :read` write fail and the
        claim decide again; one written before it is seen by the second read."""
        record = self._get_item(source.bucket, source.key, _RECORD_SK)
        if redrive_id is None:
            return record, False
        marker = self._get_item(source.bucket, source.key, _redrive_sk(redrive_id))
        return record, marker is not None

    @staticmethod
    def _claimed(
        source: SourceRef, owner: str, token: str, lease: datetime, item: Item
    ) -> ClaimResult:
        record = _record(item)
        claim = Claim(source, owner, token, attempt=record.attempts, lease_expires_at=lease)
        return ClaimResult(ClaimOutcome.CLAIMED, claim=claim, record=record)

    def _get_item(self, bucket: str, key: str, sk: str) -> Item | None:
        args = {"TableName": self.table, "Key": _key(bucket, key, sk), "ConsistentRead": True}
        item: Item | None = self._call("get_item", **args).get("Item")
        return item

    def _held_update(
        self,
        claim: Claim,
        now_us: int,
        sets: Mapping[str, Plain],
        *,
        remove: Sequence[str] = (),
        guard: tuple[str, Mapping[str, Plain]] | None = None,
    ) -> Item:
        """An Update of the claim's record (stamped and versioned) that applies only while the
        claim is held and, given a `guard` (condition, its values), only while that holds."""
        values: dict[str, Plain] = {**sets, "updated_at": now_us, "one": 1}
        values.update(token=claim.token, processing=_PROCESSING)
        update = "SET " + ", ".join(f"#{name} = :{name}" for name in (*sets, "updated_at"))
        update += ", #version = #version + :one"
        if remove:
            update += " REMOVE " + ", ".join(f"#{name}" for name in remove)
        condition = _HELD
        if guard is not None:
            condition += f" AND {guard[0]}"
            values.update(guard[1])
        key = _key(claim.source.bucket, claim.source.key, _RECORD_SK)
        return {"TableName": self.table, "Key": key, **_expr(values, update, condition)}

    def _write_held(
        self,
        claim: Claim,
        now_us: int,
        sets: Mapping[str, Plain],
        *,
        remove: Sequence[str] = (),
        guard: tuple[str, Mapping[str, Plain]] | None = None,
    ) -> Item:
        """Apply `_held_update`; the record as written. Raises: LeaseLost."""
        update = self._held_update(claim, now_us, sets, remove=remove, guard=guard)
        answer = self._held_call(claim, "update_item", ReturnValues="ALL_NEW", **update)
        attributes: Item = answer["Attributes"]
        return attributes

    def _held_transaction(self, claim: Claim, update: Item, item: Item) -> FileRecord:
        """`update` (a `_held_update`) and a Put of `item`, both or neither: the record as
        written. botocore gives the transaction a ClientRequestToken, so its own retries cannot
        apply it twice. Raises: LeaseLost."""
        put = {"TableName": self.table, "Item": item}
        self._held_call(
            claim, "transact_write_items", TransactItems=[{"Update": update}, {"Put": put}]
        )
        record = self.get(claim.source.bucket, claim.source.key)
        assert record is not None, "records are never deleted"
        return record

    def _held_call(self, claim: Claim, operation: str, **args: Any) -> Item:
        # A request retried after its first try was applied (lost answer) fails its condition
        # too and reports LeaseLost; the redelivered message then finds the object completed
        # (or failed) and moves on, so that false alarm costs one redelivery.
        try:
            return self._call(operation, **args)
        except _Refused:
            raise self._lost(claim) from None

    def _call(self, operation: str, **args: Any) -> Item:
        """One DynamoDB request, with its errors translated (the one place that does it)."""
        try:
            answer: Item = getattr(self._client, operation)(**args)
        except ClientError as exc:
            raise self._translate(exc, operation) from exc
        except (BotoConnectionError, HTTPClientError) as exc:
            raise BackendBusy(
                f"DynamoDB {operation} did not answer: {exc}",
                table=self.table,
                hint="check the network and the endpoint; retry",
            ) from exc
        except NoCredentialsError as exc:
            raise ConfigError(
                "no AWS credentials for DynamoDB",
                table=self.table,
                hint="set a profile in sluice.toml, or AWS_PROFILE",
            ) from exc
        return answer

    def _translate(self, exc: Any, operation: str) -> Exception:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = f"DynamoDB {operation} on {self.table!r}: {code}: {error.get('Message', '')}"
        reasons = {str(r.get("Code")) for r in exc.response.get("CancellationReasons", [])}
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        if code == "ConditionalCheckFailedException" or "ConditionalCheckFailed" in reasons:
            return _Refused(message)
        if code == "ResourceInUseException" and operation == "create_table":
            return _Refused(message)
        context = {"table": self.table, "code": code}
        # botocore has already retried these with backoff (standard mode, see aws.py).
        if code in _TRANSIENT_CODES or reasons & _TRANSIENT_REASONS or status >= 500:
            hint = "DynamoDB is throttling or busy; retry with backoff"
            return BackendBusy(message, hint=hint, **context)
        if code == "ResourceNotFoundException":
            hint = f"create the ledger table {self.table!r} (DynamoDbLedger.create_table)"
            return ConfigError(message, hint=hint + " or check region and endpoint", **context)
        # Anything else (a malformed request, an item over 400 KB, access denied) fails the
        # same way when repeated.
        error_class: type[SluiceError] = ConfigError if "AccessDenied" in code else TerminalError
        return error_class(message, **context)

    @staticmethod
    def _lost(claim: Claim) -> LeaseLost:
        return LeaseLost(
            f"the claim on {claim.source.uri} is no longer held by {claim.owner}",
            source_ref=claim.source.uri,
            owner=claim.owner,
            hint="another worker took over; this attempt's work will be redone",
        )
