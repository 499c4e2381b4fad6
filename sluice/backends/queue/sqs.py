"""The queue on SQS, through an injected boto3 SQS client (built by `sluice.backends.aws`).

Where this differs from the embedded queue:

- A stale receipt handle is accepted. SQS documents that it then deletes nothing; moto deletes
  the message with any handle it ever issued. A malformed or unknown handle raises.
- Delivery order is best effort, and a receive without a wait samples only some of SQS's
  servers, so it may return fewer messages than are visible.
- Counts are approximate, and `oldest_age_seconds` is always None: SQS reports the oldest
  message's age only as the CloudWatch metric ApproximateAgeOfOldestMessage.
- Retention is 60 s to 14 days; a message moved to the DLQ keeps its receive count.
- Only String attributes are read back (sluice sends no other kind).
- FIFO: which messages a receive returns and in what order across groups is SQS's choice;
  whether a queue deduplicates by content is read once per `SqsQueue` (when a message without a
  deduplication id needs to know), so a change made since is caught by SQS's refusal instead.
- The DLQ move is SQS's message-move task, which runs in the background. Endpoints without it
  (the moto server answers a bare HTTP 500) get the receive/send/delete loop of `move_messages`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from functools import cached_property
from typing import Any
from urllib.parse import urlparse

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from sluice.backends.queue.base import (
    MAX_BATCH,
    MAX_MOVE_RATE,
    MAX_RECEIVE_COUNT,
    MAX_RETENTION_SECONDS,
    MAX_VISIBILITY_SECONDS,
    MAX_WAIT_SECONDS,
    Message,
    MoveStatus,
    MoveTask,
    OutgoingMessage,
    QueueCounts,
    QueueSettings,
    RedrivePolicy,
    SendBatchResult,
)
from sluice.backends.queue.checks import (
    batch_entry_ids,
    check_fifo_message,
    check_fifo_settings,
    check_queue_name,
    check_range,
    is_fifo,
    validate_message,
)
from sluice.backends.queue.move import check_same_kind, move_messages
from sluice.errors import (
    BackendBusy,
    BatchTooLarge,
    ConfigError,
    QueueNotFound,
    ReceiptHandleInvalid,
    SluiceError,
    TransientError,
)

MIN_RETENTION_SECONDS = 60

# Error codes without SQS's "AWS.SimpleQueueService." prefix. Both the code and the query-protocol
# code of an answer are matched, since the JSON and query protocols name some errors differently.
_NOT_FOUND = {"NonExistentQueue", "QueueDoesNotExist"}
_ALREADY_EXISTS = {"QueueAlreadyExists", "QueueNameExists"}
_BAD_HANDLE = {"ReceiptHandleIsInvalid", "MessageNotInflight"}
_TOO_LARGE = {"TooManyEntriesInBatchRequest", "BatchRequestTooLong"}
_THROTTLED = {"Throttling", "ThrottlingException", "RequestThrottled", "KmsThrottled", "OverLimit"}
_TRANSIENT = {"InternalError", "InternalFailure", "ServiceUnavailable", "PurgeQueueInProgress"}
_UNSUPPORTED = {"UnsupportedOperation", "UnknownOperationException", "InvalidAction"}
_BOTO_ERRORS = (ClientError, BotoConnectionError, HTTPClientError)
_NOT_FOUND_HINT = "check the queue names or URLs in sluice.toml and the environment's region"

# Endpoints that do not know StartMessageMoveTask. Asking costs every retry of a 500 (seconds),
# and an endpoint does not gain the operation while the process runs, so it is asked once.
_NO_MOVE_TASK: set[str] = set()


class SqsQueueFactory:
    """The SQS queues of one account and region, through `client`."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def create(self, name: str, settings: QueueSettings) -> SqsQueue:
        """Create a queue, or update the settings of an existing one (idempotent).

        Raises:
            ConfigError: a bad name or setting (retention under 60 s, `check_fifo_settings`),
                or a queue naming itself as its dead-letter queue.
            QueueNotFound: the redrive policy names a queue that does not exist.
        """
        check_queue_name(name)
        check_fifo_settings(name, settings)
        visibility = settings.visibility_timeout_seconds
        check_range("visibility_timeout_seconds", visibility, 0, MAX_VISIBILITY_SECONDS)
        retention = settings.retention_seconds
        check_range("retention_seconds", retention, MIN_RETENTION_SECONDS, MAX_RETENTION_SECONDS)
        attributes = {
            "VisibilityTimeout": str(visibility),
            "MessageRetentionPeriod": str(retention),
        }
        if settings.fifo:
            # SQS refuses both attributes on a standard queue, even as "false".
            attributes["FifoQueue"] = "true"
            by_content = settings.content_based_deduplication
            attributes["ContentBasedDeduplication"] = "true" if by_content else "false"
        policy = settings.redrive_policy
        if policy is not None:
            check_range("max_receive_count", policy.max_receive_count, 1, MAX_RECEIVE_COUNT)
            dlq = self.open(policy.dead_letter_queue)
            if dlq.name == name:
                raise ConfigError(f"queue {name!r} cannot be its own dead-letter queue", queue=name)
            attributes["RedrivePolicy"] = json.dumps(
                {"deadLetterTargetArn": dlq.arn, "maxReceiveCount": policy.max_receive_count}
            )
        with _sqs_errors(name):
            # An empty RedrivePolicy removes the one an existing queue has, when the settings
            # have none: CreateQueue compares only the attributes it is given.
            update = {} if policy else {"RedrivePolicy": ""}
            try:
                url = self._client.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
            except ClientError as exc:
                if not _codes(exc) & _ALREADY_EXISTS:
                    raise
                # CreateQueue refuses an existing name with other values: update them instead
                # (all but FifoQueue, which a queue keeps for life).
                url = self._client.get_queue_url(QueueName=name)["QueueUrl"]
                update = {**update, **attributes}
                update.pop("FifoQueue", None)
            if update:
                self._client.set_queue_attributes(QueueUrl=url, Attributes=update)
        return SqsQueue(self._client, name, url)

    def open(self, name: str) -> SqsQueue:
        """Open a queue by name or by URL (sluice.toml on AWS often holds URLs).

        Raises:
        QueueNotFound: no such queue."""
        if name.startswith(("https://", "http://")):
            queue_name = urlparse(name).path.rstrip("/").rsplit("/", 1)[-1]
            queue = SqsQueue(self._client, queue_name, name)
            _ = queue.arn  # a URL is not looked up: asking for the ARN tells whether it exists
            return queue
        with _sqs_errors(name):
            url = self._client.get_queue_url(QueueName=name)["QueueUrl"]
        return SqsQueue(self._client, name, url)

    def start_message_move(
        self, source_dlq: str, destination: str | None = None, max_per_second: int | None = None
    ) -> MoveTask:
        """Start SQS's message-move task, or move the messages here where there is none (then a
        missing destination needs the DLQ to serve exactly one queue, as with the embedded one).
        """
        if max_per_second is not None:
            check_range("max_per_second", max_per_second, 1, MAX_MOVE_RATE)
        source = self.open(source_dlq)
        target = None if destination is None else self.open(destination)
        if target is not None and target.url == source.url:
            raise ConfigError(f"queue {source.name!r} cannot be moved into itself")
        if target is not None:
            check_same_kind(source, target)
        handle = self._start_move_task(source, target, max_per_second)
        if handle is not None:
            named = None if target is None else target.name
            return MoveTask(source.name, named, MoveStatus.RUNNING, task_handle=handle)
        if target is None:
            target = self._only_source_of(source)
        # A 1 s long poll: a receive without a wait can come back empty from a non-empty queue.
        return move_messages(source, target, max_per_second=max_per_second, wait_seconds=1)

    def move_task_status(self, task: MoveTask) -> MoveTask:
        """The task as ListMessageMoveTasks reports it (a task moved here is already final)."""
        if task.task_handle is None:
            return task
        source = self.open(task.source)
        with _sqs_errors(source.name):
            answer = self._client.list_message_move_tasks(SourceArn=source.arn, MaxResults=10)
        results: list[dict[str, Any]] = answer.get("Results", [])
        # Only a running task shows its handle. SQS runs one task per source at a time and lists
        # the newest first, so a finished task is the first result.
        found = next((r for r in results if r.get("TaskHandle") == task.task_handle), None)
        found = found or (results[0] if results else None)
        if found is None:
            return task
        return replace(
            task,
            status=MoveStatus(found["Status"]),
            moved=int(found.get("ApproximateNumberOfMessagesMoved", 0)),
            to_move=found.get("ApproximateNumberOfMessagesToMove"),
            failure_reason=found.get("FailureReason"),
        )

    def _start_move_task(
        self, source: SqsQueue, target: SqsQueue | None, max_per_second: int | None
    ) -> str | None:
        """The handle of the started task, or None when the endpoint has no such operation."""
        endpoint = str(self._client.meta.endpoint_url)
        if endpoint in _NO_MOVE_TASK:
            return None
        params: dict[str, Any] = {"SourceArn": source.arn}
        if target is not None:
            params["DestinationArn"] = target.arn
        if max_per_second is not None:
            params["MaxNumberOfMessagesPerSecond"] = max_per_second
        try:
            handle: str = self._client.start_message_move_task(**params)["TaskHandle"]
        except _BOTO_ERRORS as exc:
            if not _unsupported(exc):
                raise _translate(exc, source.name) from exc
            _NO_MOVE_TASK.add(endpoint)
            return None
        return handle

    def _only_source_of(self, dlq: SqsQueue) -> SqsQueue:
        with _sqs_errors(dlq.name):
            answer = self._client.list_dead_letter_source_queues(QueueUrl=dlq.url)
        urls: list[str] = answer.get("queueUrls", [])
        if len(urls) != 1:
            message = f"queue {dlq.name!r} is the DLQ of {len(urls)} queues; name the destination"
            raise ConfigError(message, queue=dlq.name, sources=urls)
        return self.open(urls[0])


class SqsQueue:
    """One SQS queue: `name` is its name, `url` its URL."""

    def __init__(self, client: Any, name: str, url: str) -> None:
        self._client = client
        self.name = name
        self.url = url

    @cached_property
    def arn(self) -> str:
        return self._attributes("QueueArn")["QueueArn"]

    @cached_property
    def _content_based_deduplication(self) -> bool:
        return self._attributes("ContentBasedDeduplication")["ContentBasedDeduplication"] == "true"

    def send(
        self,
        body: str,
        attributes: Mapping[str, str] | None = None,
        *,
        group_id: str | None = None,
        deduplication_id: str | None = None,
    ) -> str:
        """The id of a duplicate sent to a FIFO queue is SQS's (moto: a new one each time)."""
        message = OutgoingMessage(
            body, dict(attributes or {}), group_id=group_id, deduplication_id=deduplication_id
        )
        self._check(message)
        with _sqs_errors(self.name):
            answer = self._client.send_message(QueueUrl=self.url, **_entry(message))
        return str(answer["MessageId"])

    def send_batch(self, entries: Sequence[OutgoingMessage]) -> SendBatchResult:
        """Invalid entries are refused here, before the request; SQS's refusals join them."""
        ids = batch_entry_ids(self.name, entries)
        failed: dict[str, str] = {}
        request: list[dict[str, Any]] = []
        for entry_id, entry in zip(ids, entries, strict=True):
            try:
                self._check(entry)
            except ConfigError as exc:
                failed[entry_id] = exc.message
            else:
                request.append({"Id": entry_id, **_entry(entry)})
        if not request:
            return SendBatchResult(failed=failed)
        with _sqs_errors(self.name):
            answer = self._client.send_message_batch(QueueUrl=self.url, Entries=request)
        sent = {ok["Id"]: ok["MessageId"] for ok in answer.get("Successful", [])}
        for fault in answer.get("Failed", []):
            # A sender fault fails again as it is; SQS's own may succeed when sent again.
            whose = "" if fault.get("SenderFault") else " (an SQS fault: sending again may work)"
            failed[fault["Id"]] = f"{fault.get('Code')}: {fault.get('Message', '')}{whose}"
        return SendBatchResult(sent=sent, failed=failed)

    def receive(
        self,
        max_messages: int = 1,
        *,
        visibility_timeout: int | None = None,
        wait_seconds: float = 0,
    ) -> list[Message]:
        """SQS waits whole seconds, so `wait_seconds` rounds up."""
        check_range("max_messages", max_messages, 1, MAX_BATCH)
        check_range("wait_seconds", wait_seconds, 0, MAX_WAIT_SECONDS)
        params: dict[str, Any] = {
            "QueueUrl": self.url,
            "MaxNumberOfMessages": max_messages,
            "WaitTimeSeconds": math.ceil(wait_seconds),
            "MessageSystemAttributeNames": [
                "ApproximateReceiveCount",
                "SentTimestamp",
                "MessageGroupId",
                "MessageDeduplicationId",
            ],
            "MessageAttributeNames": ["All"],
        }
        if visibility_timeout is not None:
            check_range("visibility_timeout", visibility_timeout, 0, MAX_VISIBILITY_SECONDS)
            params["VisibilityTimeout"] = visibility_timeout
        with _sqs_errors(self.name):
            answer = self._client.receive_message(**params)
        return [_message(raw) for raw in answer.get("Messages", [])]

    def delete(self, receipt_handle: str) -> None:
        """Raises:
        ReceiptHandleInvalid: a malformed or unknown handle (a stale one is accepted)."""
        with _sqs_errors(self.name, receipt_handle):
            self._client.delete_message(QueueUrl=self.url, ReceiptHandle=receipt_handle)

    def change_visibility(self, receipt_handle: str, timeout_seconds: int) -> None:
        """Raises:
        ReceiptHandleInvalid: a malformed or unknown handle, or a message not in flight.
        ConfigError: the timeout is outside 0..12 hours."""
        check_range("timeout_seconds", timeout_seconds, 0, MAX_VISIBILITY_SECONDS)
        with _sqs_errors(self.name, receipt_handle):
            self._client.change_message_visibility(
                QueueUrl=self.url, ReceiptHandle=receipt_handle, VisibilityTimeout=timeout_seconds
            )

    def counts(self) -> QueueCounts:
        """Approximate counts; `oldest_age_seconds` is None (only CloudWatch has it on SQS)."""
        names = [f"ApproximateNumberOfMessages{kind}" for kind in ("", "NotVisible", "Delayed")]
        attributes = self._attributes(*names)
        visible, in_flight, delayed = (int(attributes.get(name, 0)) for name in names)
        return QueueCounts(visible, in_flight, delayed, oldest_age_seconds=None)

    def settings(self) -> QueueSettings:
        fifo = is_fifo(self.name)
        # A standard queue answers InvalidAttributeName when asked for a FIFO attribute.
        fifo_names = ("ContentBasedDeduplication",) if fifo else ()
        attributes = self._attributes(
            "VisibilityTimeout", "MessageRetentionPeriod", "RedrivePolicy", *fifo_names
        )
        policy = None
        if attributes.get("RedrivePolicy"):
            raw = json.loads(attributes["RedrivePolicy"])
            # The policy names the DLQ by ARN, whose last part is the queue's name.
            dlq_name = str(raw["deadLetterTargetArn"]).rsplit(":", 1)[-1]
            policy = RedrivePolicy(dlq_name, int(raw["maxReceiveCount"]))
        return QueueSettings(
            visibility_timeout_seconds=int(attributes["VisibilityTimeout"]),
            retention_seconds=int(attributes["MessageRetentionPeriod"]),
            redrive_policy=policy,
            fifo=fifo,
            content_based_deduplication=attributes.get("ContentBasedDeduplication") == "true",
        )

    def purge(self) -> None:
        """Raises:
        TransientError: the queue was purged less than 60 seconds ago."""
        with _sqs_errors(self.name):
            self._client.purge_queue(QueueUrl=self.url)

    def _check(self, message: OutgoingMessage) -> None:
        validate_message(message)
        fifo = is_fifo(self.name)
        # Asked (once) only when it decides: a FIFO message without a deduplication id.
        by_content = fifo and message.deduplication_id is None and self._content_based_deduplication
        check_fifo_message(self.name, message, fifo=fifo, content_based_deduplication=by_content)

    def _attributes(self, *names: str) -> dict[str, str]:
        with _sqs_errors(self.name):
            answer = self._client.get_queue_attributes(QueueUrl=self.url, AttributeNames=names)
        return dict(answer.get("Attributes", {}))


def _entry(message: OutgoingMessage) -> dict[str, Any]:
    entry: dict[str, Any] = {"MessageBody": message.body}
    if message.group_id is not None:
        entry["MessageGroupId"] = message.group_id
    if message.deduplication_id is not None:
        entry["MessageDeduplicationId"] = message.deduplication_id
    if message.attributes:
        entry["MessageAttributes"] = {
            key: {"DataType": "String", "StringValue": value}
            for key, value in message.attributes.items()
        }
    return entry


def _message(raw: dict[str, Any]) -> Message:
    system = raw.get("Attributes", {})
    return Message(
        message_id=raw["MessageId"],
        body=raw["Body"],
        attributes={
            key: value["StringValue"]
            for key, value in raw.get("MessageAttributes", {}).items()
            if "StringValue" in value
        },
        receipt_handle=raw["ReceiptHandle"],
        receive_count=int(system.get("ApproximateReceiveCount", 1)),
        sent_at=datetime.fromtimestamp(int(system.get("SentTimestamp", 0)) / 1000, UTC),
        group_id=system.get("MessageGroupId"),
        deduplication_id=system.get("MessageDeduplicationId"),
    )


@contextmanager
def _sqs_errors(queue: str, receipt_handle: str | None = None) -> Iterator[None]:
    try:
        yield
    except _BOTO_ERRORS as exc:
        raise _translate(exc, queue, receipt_handle) from exc


def _translate(exc: Exception, queue: str, receipt_handle: str | None = None) -> SluiceError:
    """The one place botocore's errors become sluice's (the caller chains the original)."""
    if not isinstance(exc, ClientError):
        return TransientError(f"SQS did not answer for queue {queue!r}: {exc}", queue=queue)
    codes, status = _codes(exc), _status(exc)
    message = str(exc.response.get("Error", {}).get("Message") or exc)
    context: dict[str, Any] = {"queue": queue, "code": "/".join(sorted(codes)) or None}
    if codes & _NOT_FOUND:
        return QueueNotFound(f"queue {queue!r} does not exist", hint=_NOT_FOUND_HINT, **context)
    # An expired handle comes back as InvalidParameterValue naming the ReceiptHandle parameter.
    if codes & _BAD_HANDLE or (receipt_handle is not None and "ReceiptHandle" in message):
        return ReceiptHandleInvalid(message, receipt_handle=receipt_handle, **context)
    if codes & _TOO_LARGE:
        return BatchTooLarge(message, **context)
    if codes & _THROTTLED:
        return BackendBusy(f"SQS is throttling queue {queue!r}: {message}", **context)
    if codes & _TRANSIENT or status >= 500:
        return TransientError(f"SQS failed on queue {queue!r}: {message}", **context)
    return ConfigError(f"SQS refused the request on queue {queue!r}: {message}", **context)


def _codes(exc: Any) -> set[str]:
    error = exc.response.get("Error", {})
    codes = {str(error.get(key) or "") for key in ("Code", "QueryErrorCode")}
    return {code.removeprefix("AWS.SimpleQueueService.") for code in codes} - {""}


def _status(exc: Any) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _unsupported(exc: Exception) -> bool:
    """Whether the endpoint answered that it has no such operation.

    SQS names an unknown operation with one of `_UNSUPPORTED`. The moto server answers with no
    error document at all, only an HTTP 500 page, which botocore reports by its status.
    """
    if not isinstance(exc, ClientError):
        return False
    codes, status = _codes(exc), _status(exc)
    return bool(codes & _UNSUPPORTED) or (status in (500, 501) and codes <= {str(status)})
