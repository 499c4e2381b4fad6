"""Lambda handlers with real event shapes, against moto-backed S3, SQS, DynamoDB and Glue."""

from __future__ import annotations

import gzip
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from sluice.aws.handlers import parser_handler, reconciler_handler
from sluice.backends.ledger.base import FileStatus, SourceRef
from sluice.config import config_from_environ
from sluice.env import Env
from sluice.errors import ConfigError
from sluice.layout import ObjectUri, raw_key
from sluice.messages import CORRELATION_ID, process_raw_file
from tests.conftest import line, make_event

pytestmark = pytest.mark.aws


class Context:
    aws_request_id = "req-1"


def sqs_record(body: str, correlation_id: str, receive_count: int = 1) -> dict[str, Any]:
    """One record of an SQS event as Lambda delivers it."""
    return {
        "messageId": str(uuid.uuid4()),
        "receiptHandle": "AQEB" + uuid.uuid4().hex,
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": str(receive_count),
            "SentTimestamp": "1732482575000",
            "SenderId": "AIDAEXAMPLE",
            "ApproximateFirstReceiveTimestamp": "1732482575001",
        },
        "messageAttributes": {
            CORRELATION_ID: {
                "stringValue": correlation_id,
                "stringListValues": [],
                "binaryListValues": [],
                "dataType": "String",
            }
        },
        "md5OfBody": "0" * 32,
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:processing",
        "awsRegion": "us-east-1",
    }


def put_raw(env: Env, data: bytes) -> ObjectUri:
    uri = ObjectUri(env.config.buckets.raw, raw_key(datetime.now(UTC)))
    env.store.put(uri.bucket, uri.key, data)
    return uri


def test_config_from_lambda_environment_variables() -> None:
    config = config_from_environ(
        {
            "SLUICE_BACKEND": "aws",
            "SLUICE_BUCKET_RAW": "acme-raw",
            "SLUICE_QUEUE_PROCESSING": "https://sqs.us-east-1.amazonaws.com/1/p",
            "SLUICE_LEASE_SECONDS": "360",
            "AWS_REGION": "eu-west-1",
        }
    )
    assert (config.backend, config.buckets.raw, config.lease_seconds) == ("aws", "acme-raw", 360)
    assert config.queues.processing.endswith("/p") and config.region == "eu-west-1"
    with pytest.raises(ConfigError, match="integer"):
        config_from_environ({"SLUICE_LEASE_SECONDS": "soon"})
    with pytest.raises(ConfigError, match="SLUICE_BACKEND"):
        config_from_environ({"SLUICE_BACKEND": "gcp"})


def test_parser_handler_reports_partial_batch_failures(aws_env: Env) -> None:
    good = put_raw(aws_env, gzip.compress(line(make_event("g")) + b"\nnot json\n"))
    corrupt = put_raw(aws_env, b"\x1f\x8b\x08\x00 not a deflate stream")
    busy = put_raw(aws_env, gzip.compress(line(make_event("b")) + b"\n"))
    etag = aws_env.store.head(busy.bucket, busy.key).etag
    held = aws_env.ledger.claim(SourceRef(busy.bucket, busy.key, etag), "another-lambda", 60)
    assert held.claim is not None
    records = [
        sqs_record(process_raw_file(good).body, "c-good"),
        sqs_record(process_raw_file(corrupt).body, "c-corrupt"),
        sqs_record(process_raw_file(busy).body, "c-busy"),
        sqs_record("{not json", "c-invalid"),
    ]
    answer = parser_handler({"Records": records}, Context(), env=aws_env)
    # Only the busy object is retried by SQS; terminal ones went to the DLQ and count as done.
    assert answer == {"batchItemFailures": [{"itemIdentifier": records[2]["messageId"]}]}
    record = aws_env.ledger.get(good.bucket, good.key)
    assert record is not None and record.status is FileStatus.COMPLETED
    assert record.counts is not None and record.counts.quarantined_lines == 1
    failed = aws_env.ledger.get(corrupt.bucket, corrupt.key)
    assert failed is not None and failed.terminal and failed.error_class == "CorruptObject"
    assert aws_env.ledger.failures(corrupt.bucket, corrupt.key)[-1].correlation_id == "c-corrupt"
    moved = aws_env.processing_dlq.receive(10, wait_seconds=1)
    assert sorted(m.body for m in moved) == sorted([records[1]["body"], "{not json"])
    assert all(m.attributes[CORRELATION_ID] in ("c-corrupt", "c-invalid") for m in moved)


def test_reconciler_enqueues_unprocessed_objects_and_registers_missing_partitions(
    aws_env: Env,
) -> None:
    done = put_raw(aws_env, gzip.compress(line(make_event("d")) + b"\n"))
    parser_handler(
        {"Records": [sqs_record(process_raw_file(done).body, "c")]}, Context(), env=aws_env
    )
    table = "telemetry_lock_flat"
    registered = list(aws_env.catalog.list_partitions(table))
    assert registered
    aws_env.catalog.drop_partitions(table, registered)  # drift: a partition dropped by hand
    orphan = put_raw(aws_env, gzip.compress(line(make_event("o")) + b"\n"))  # lost notification
    scheduled = {"source": "aws.events", "min_age_minutes": 0}
    answer = reconciler_handler(scheduled, Context(), env=aws_env)
    assert answer["enqueued"] == [str(orphan)]
    assert answer["partitions_added"] == {table: len(registered)}
    assert list(aws_env.catalog.list_partitions(table)) == registered
    (message,) = aws_env.processing_queue.receive(1, wait_seconds=1)
    assert json.loads(message.body)["key"] == orphan.key
    again = reconciler_handler({"source": "aws.events"}, Context(), env=aws_env)
    assert again["partitions_added"] == {} and again["enqueued"] == []  # too young to resend
