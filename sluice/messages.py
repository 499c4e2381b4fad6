"""Queue messages (DESIGN §5): every body is JSON with a `kind`; every message carries a
`correlation_id` attribute. S3 event notification bodies are read as `process_raw_file`."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import unquote_plus

from sluice.backends.queue.base import OutgoingMessage
from sluice.errors import InvalidMessage
from sluice.layout import ObjectUri

CORRELATION_ID = "correlation_id"


class MessageKind(StrEnum):
    PROCESS_RAW_FILE = "process_raw_file"
    REDRIVE_RAW_FILE = "redrive_raw_file"


@dataclass(frozen=True)
class ObjectMessage:
    kind: MessageKind
    uri: ObjectUri
    redrive_id: str | None = None

    @property
    def forced(self) -> bool:
        return self.kind is MessageKind.REDRIVE_RAW_FILE


def new_correlation_id() -> str:
    return str(uuid.uuid4())


def process_raw_file(uri: ObjectUri, correlation_id: str | None = None) -> OutgoingMessage:
    body = {"kind": MessageKind.PROCESS_RAW_FILE.value, "bucket": uri.bucket, "key": uri.key}
    return OutgoingMessage(
        json.dumps(body), {CORRELATION_ID: correlation_id or new_correlation_id()}
    )


def redrive_raw_file(
    uri: ObjectUri, redrive_id: str, correlation_id: str | None = None
) -> OutgoingMessage:
    body = {
        "kind": MessageKind.REDRIVE_RAW_FILE.value,
        "bucket": uri.bucket,
        "key": uri.key,
        "redrive_id": redrive_id,
    }
    return OutgoingMessage(
        json.dumps(body), {CORRELATION_ID: correlation_id or new_correlation_id()}
    )


def _string(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidMessage(f"message field {name!r} must be a non-empty string, got {value!r}")
    return value


def _s3_records(records: Any) -> list[ObjectMessage]:
    if not isinstance(records, list):
        raise InvalidMessage("S3 notification 'Records' must be a list")
    out = []
    for record in records:
        try:
            bucket = record["s3"]["bucket"]["name"]
            key = unquote_plus(record["s3"]["object"]["key"])
        except (KeyError, TypeError) as exc:
            raise InvalidMessage(f"S3 notification record without s3.bucket/object: {exc}") from exc
        if not record.get("eventName", "ObjectCreated").startswith("ObjectCreated"):
            continue
        out.append(ObjectMessage(MessageKind.PROCESS_RAW_FILE, ObjectUri(bucket, key)))
    return out


def parse_body(body: str) -> list[ObjectMessage]:
    """The objects a message asks to process (an S3 test event asks for none).

    Raises:
        InvalidMessage: not JSON, unknown kind, missing fields.
    """
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise InvalidMessage(f"message body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidMessage("message body is not a JSON object")
    if "Records" in data:
        return _s3_records(data["Records"])
    if data.get("Event") == "s3:TestEvent":
        return []
    kind = data.get("kind")
    try:
        message_kind = MessageKind(str(kind))
    except ValueError as exc:
        known = [k.value for k in MessageKind]
        raise InvalidMessage(f"unknown message kind {kind!r}; known kinds: {known}") from exc
    uri = ObjectUri(_string(data, "bucket"), _string(data, "key"))
    if message_kind is MessageKind.REDRIVE_RAW_FILE:
        return [ObjectMessage(message_kind, uri, _string(data, "redrive_id"))]
    return [ObjectMessage(message_kind, uri)]
