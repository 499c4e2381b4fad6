"""What the DynamoDB ledger's items look like, and how its requests are written and answered.

One table, one partition per raw object (``pk = "file#s3://bucket/key"``), several item kinds
under it (``sk``)::

    sk = "file"                             the record: status, etag, attempts, owner, token,
                                            lease, outputs, pending outputs, counts, version
    sk = "redrive#<sha256 of the id>"       a redrive id completed for this object
    sk = "failure#<at>#<attempt>#<token>"   one failed attempt (sorts oldest first)
    sk = "receipt"                          what ingest wrote into the object

Every item also names its object (``bucket``, ``key``); times are integer microseconds since
the epoch. Outputs and pending outputs are zlib-compressed JSON on the record (`pack`: an output
compresses to a few bytes), since items of their own would make ``complete`` a multi-item
transaction, capped at 100 items; counts are a JSON string. Two global secondary indexes:
`STATUS_INDEX` over records, `RECEIPT_INDEX` over receipts (only they carry ``receipt_index``).

Requests name attributes and values through `expressions`; `call` sends one and translates
DynamoDB's errors into sluice's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import zlib
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from botocore.exceptions import ClientError, HTTPClientError, NoCredentialsError
from botocore.exceptions import ConnectionError as BotoConnectionError

from sluice.backends.ledger.base import (
    Claim,
    Counts,
    FileRecord,
    FileStatus,
    Output,
    Receipt,
    SourceRef,
)
from sluice.errors import BackendBusy, ConfigError, SluiceError, TerminalError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

STATUS_INDEX = "by_status"  # status (hash) + updated_at (range): list by status and age
RECEIPT_INDEX = "receipts"  # receipt_index (hash, only on receipts) + received_at (range)
# Room for outputs and pending outputs once keys, errors and counts take their share of the
# 400 KB item limit.
MAX_BLOB_BYTES = 300_000
MAX_ERROR_CHARS = 8_000  # at most 32 KB of UTF-8, on the record and on its failure event
RECORD_SK = "file"
RECEIPT_SK = "receipt"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_TIMES = frozenset(
    {"at", "created_at", "updated_at", "completed_at", "lease_expires_at", "received_at", "done_at"}
)
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

Item = dict[str, Any]
Plain = str | int | bool | bytes
T = TypeVar("T", bound="DataclassInstance")


def to_us(value: datetime) -> int:
    """A time as stored: integer microseconds since the epoch (a naive time is taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _MICROSECOND


def _at(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def partition_key(bucket: str, key: str) -> str:
    # A bucket name holds no "/", so the URI names exactly one (bucket, key).
    return f"file#s3://{bucket}/{key}"


def item_key(bucket: str, key: str, sk: str) -> Item:
    return {"pk": {"S": partition_key(bucket, key)}, "sk": {"S": sk}}


def redrive_sk(redrive_id: str) -> str:
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


def make_item(bucket: str, key: str, sk: str, /, **values: Plain | None) -> Item:
    """An item under the object's partition, which names it too; None values are left out."""
    values = {"bucket": bucket, "key": key, **values}
    return {**item_key(bucket, key, sk), **{k: _av(v) for k, v in values.items() if v is not None}}


def plain(item: Item) -> dict[str, Any]:
    """An item's attribute values as plain ones (the inverse of `_av`; times as datetimes)."""
    out: dict[str, Any] = {}
    for name, value in item.items():
        ((kind, raw),) = value.items()
        if kind == "N":
            raw = _at(int(raw)) if name in _TIMES else int(raw)
        out[name] = raw
    return out


def build(cls: type[T], attributes: Mapping[str, Any], **decoded: Any) -> T:
    """A dataclass from (`plain`) attributes named as its fields (an absent one is None)."""
    fields = (f.name for f in dataclasses.fields(cls))
    return cls(**{name: decoded.get(name, attributes.get(name)) for name in fields})


def pack(values: tuple[Any, ...]) -> bytes:
    """Values as a compressed JSON blob (outputs, pending outputs)."""
    return zlib.compress(msgspec.json.encode(values))


def unpack(blob: bytes | None, kind: Any) -> Any:
    """The inverse of `pack`, as `kind`; an absent blob is an empty tuple."""
    return () if blob is None else msgspec.json.decode(zlib.decompress(blob), type=kind)


def file_record(item: Item) -> FileRecord:
    """The record item as a `FileRecord`."""
    p = plain(item)
    counts = p.get("counts")
    return build(
        FileRecord,
        p,
        status=FileStatus(p["status"]),
        outputs=unpack(p.get("outputs"), tuple[Output, ...]),
        pending_outputs=unpack(p.get("pending_outputs"), tuple[str, ...]),
        counts=None if counts is None else msgspec.json.decode(counts, type=Counts),
    )


def check_size(source: SourceRef, *blobs: bytes) -> None:
    """Raises: TerminalError if the blobs would not fit on the record."""
    size = sum(map(len, blobs))
    if size > MAX_BLOB_BYTES:
        raise TerminalError(
            f"the outputs of {source.uri} take {size} bytes compressed, over the"
            f" {MAX_BLOB_BYTES} bytes a DynamoDB ledger record can hold",
            source_ref=source.uri,
            hint="split the raw object into smaller ones, or use the embedded ledger",
        )


def claim_update(
    source: SourceRef, owner: str, token: str, lease_us: int, now_us: int, attempts: int
) -> tuple[dict[str, Plain], str]:
    """What a claim writes on the record: an Update expression and its values (by name). A new
    record also gets its ``created_at``, ``terminal`` and ``version``; an existing one keeps
    them, and its version counts on."""
    values: dict[str, Plain] = {
        "bucket": source.bucket,
        "key": source.key,
        "etag": source.etag,
        "status": FileStatus.PROCESSING.value,
        "owner": owner,
        "token": token,
        "lease_expires_at": lease_us,
        "updated_at": now_us,
        "attempts": attempts,
    }
    update = "SET " + ", ".join(f"#{name} = :{name}" for name in values)
    update += (
        ", #created_at = if_not_exists(#created_at, :updated_at)"
        ", #terminal = if_not_exists(#terminal, :false)"
        ", #version = if_not_exists(#version, :zero) + :one"
    )
    return {**values, "false": False, "zero": 0, "one": 1}, update


def cut_error(error: str) -> str:
    """`error` as kept on the record and its failure event: at most `MAX_ERROR_CHARS`, then a
    marker that says how much was cut."""
    if len(error) > MAX_ERROR_CHARS:
        cut = len(error) - MAX_ERROR_CHARS
        error = f"{error[:MAX_ERROR_CHARS]}... [{cut} more characters cut]"
    return error


def failure_event(
    claim: Claim,
    at_us: int,
    error: str,
    error_class: str,
    terminal: bool,
    correlation_id: str | None,
) -> Item:
    """The item of one failed attempt of `claim`, at `at_us`."""
    source = claim.source
    # While the claim is held the record's ETag and attempts are the claim's. The token in
    # the sort key keeps two failures in the same microsecond (a changed ETag restarts
    # attempts at 1) from overwriting each other.
    sk = f"failure#{at_us:020d}#{claim.attempt:010d}#{claim.token}"
    return make_item(
        source.bucket,
        source.key,
        sk,
        etag=source.etag,
        attempt=claim.attempt,
        error_class=error_class,
        error=error,
        terminal=terminal,
        correlation_id=correlation_id,
        at=at_us,
    )


def redrive_marker(source: SourceRef, redrive_id: str, done_us: int) -> Item:
    """The item that marks `redrive_id` done for the object."""
    return make_item(
        source.bucket,
        source.key,
        redrive_sk(redrive_id),
        redrive_id=redrive_id,
        done_at=done_us,
    )


def receipt_item(receipt: Receipt) -> Item:
    """The receipt's item; only receipts carry ``receipt_index`` (so `RECEIPT_INDEX` holds them
    alone)."""
    return make_item(
        receipt.bucket,
        receipt.key,
        RECEIPT_SK,
        receipt_index=RECEIPT_SK,
        lines=receipt.lines,
        bytes=receipt.bytes,
        received_at=to_us(receipt.received_at),
    )


def expressions(
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


class Refused(Exception):
    """A write refused for the state it found (a condition that did not hold, a table that
    already exists); the ledger always catches it, it never leaves the ledger."""


def call(client: Any, table: str, operation: str, /, **args: Any) -> Item:
    """One DynamoDB request, with its errors translated (the one place that does it).

    Raises: Refused, BackendBusy, ConfigError, TerminalError."""
    try:
        answer: Item = getattr(client, operation)(**args)
    except ClientError as exc:
        raise _translate(exc, operation, table) from exc
    except (BotoConnectionError, HTTPClientError) as exc:
        raise BackendBusy(
            f"DynamoDB {operation} did not answer: {exc}",
            table=table,
            hint="check the network and the endpoint; retry",
        ) from exc
    except NoCredentialsError as exc:
        raise ConfigError(
            "no AWS credentials for DynamoDB",
            table=table,
            hint="set a profile in sluice.toml, or AWS_PROFILE",
        ) from exc
    return answer


def _translate(exc: Any, operation: str, table: str) -> Exception:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    message = f"DynamoDB {operation} on {table!r}: {code}: {error.get('Message', '')}"
    reasons = {str(r.get("Code")) for r in exc.response.get("CancellationReasons", [])}
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    if code == "ConditionalCheckFailedException" or "ConditionalCheckFailed" in reasons:
        return Refused(message)
    if code == "ResourceInUseException" and operation == "create_table":
        return Refused(message)
    context = {"table": table, "code": code}
    # botocore has already retried these with backoff (standard mode, see aws.py).
    if code in _TRANSIENT_CODES or reasons & _TRANSIENT_REASONS or status >= 500:
        hint = "DynamoDB is throttling or busy; retry with backoff"
        return BackendBusy(message, hint=hint, **context)
    if code == "ResourceNotFoundException":
        hint = f"create the ledger table {table!r} (DynamoDbLedger.create_table)"
        return ConfigError(message, hint=hint + " or check region and endpoint", **context)
    # Anything else (a malformed request, an item over 400 KB, access denied) fails the
    # same way when repeated.
    error_class: type[SluiceError] = ConfigError if "AccessDenied" in code else TerminalError
    return error_class(message, **context)


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
