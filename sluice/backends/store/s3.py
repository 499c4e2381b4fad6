"""The object store on S3, through an injected boto3 client (built by `sluice.backends.aws`).

Differences from the local store, all S3's own:

- ETags are opaque: the md5 of the bytes for a single PUT, `<md5 of part md5s>-<parts>` for a
  file above `multipart_threshold` (so the same bytes uploaded by `put` and by a multipart
  `put_file` have different ETags). Either changes whenever the bytes do.
- The `last_modified` returned by `put`, `put_file` is the server's `Date` of its answer (S3
  does not return Last-Modified on a PUT); `head` and `list` give the stored value, which can be
  earlier by the upload's duration. One second resolution, as in S3's headers.
- `a` and `a/b` can both be objects.
- Objects whose key sluice refuses (`a//b`, `../x`, written by another tool) are not listed:
  everything `list` yields can be opened, copied and deleted through this store.
- Whole requests throttled (SlowDown, 503) are retried by botocore's standard retry mode (see
  `AwsClients`); this module retries only what botocore cannot see: the per-key errors inside
  a 200 DeleteObjects answer.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlsplit

import pyarrow.fs as pafs
from botocore.exceptions import BotoCoreError, ClientError

from sluice.backends.store.base import (
    DeleteResult,
    ObjectInfo,
    ObjectVersion,
    VersionDeleteResult,
    VersionRef,
    bad_key_reason,
    validate_batch,
    validate_bucket,
    validate_key,
)
from sluice.backends.store.s3_errors import translate_error
from sluice.errors import ObjectNotFound, SluiceError, TerminalError

_MiB = 1 << 20
READ_BUFFER = _MiB
# Per-key DeleteObjects errors worth another try: S3 sheds load key by key under SlowDown.
RETRYABLE_DELETE_CODES = frozenset(
    {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "OperationAborted"}
)
_BOTO_ERRORS = (ClientError, BotoCoreError)
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")  # PutObject -> put_object, the client's method

DeleteAnswer = Mapping[str, Any]


class Credentials(Protocol):
    """botocore's frozen credentials (`AwsClients.credentials()`)."""

    @property
    def access_key(self) -> str: ...
    @property
    def secret_key(self) -> str: ...
    @property
    def token(self) -> str | None: ...


def parse_delete_answer(
    answer: DeleteAnswer, requested: Sequence[VersionRef]
) -> tuple[list[VersionRef], dict[VersionRef, tuple[str, str]]]:
    """Split a DeleteObjects answer into deleted versions and failed ones (`-> (code, reason)`).

    S3 answers 200 even when some keys failed; they are listed under `Errors`. A requested
    version the answer names neither way is a failure too: we asked for a verbose answer, so
    silence proves nothing. An error that names no version id (moto's do not) stands for every
    version of its key that the answer does not confirm.
    """
    confirmed = {(e["Key"], e.get("VersionId")) for e in answer.get("Deleted", [])}
    by_version: dict[tuple[str, str | None], tuple[str, str]] = {}
    by_key: dict[str, tuple[str, str]] = {}
    for error in answer.get("Errors", []):
        code = str(error.get("Code", "Unknown"))
        reason = (code, f"{code}: {error.get('Message', 'no message')}")
        if error.get("VersionId"):
            by_version[(error["Key"], error["VersionId"])] = reason
        else:
            by_key[error["Key"]] = reason
    deleted: list[VersionRef] = []
    failed: dict[VersionRef, tuple[str, str]] = {}
    for ref in requested:
        pair = (ref.key, ref.version_id)
        if (error := by_version.get(pair) or by_key.get(ref.key)) is not None:
            failed[ref] = error
        elif pair in confirmed:
            deleted.append(ref)
        else:
            failed[ref] = ("Missing", "Missing: the DeleteObjects answer did not mention it")
    return deleted, failed


def delete_with_retries(
    send: Callable[[list[VersionRef]], DeleteAnswer],
    versions: Sequence[VersionRef],
    *,
    attempts: int = 5,
    base_delay: float = 0.1,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[list[VersionRef], dict[VersionRef, str]]:
    """Delete `versions` with `send` (one DeleteObjects request), retrying per-key throttling.

    Versions that failed with a retryable code are sent again, alone, after an exponential
    backoff with jitter (`base_delay * 2**n`); after `attempts` requests they are reported with
    their last reason. Other per-key errors are reported at once. Returns (deleted, errors).

    Raises:
        SluiceError: the first request failed as a whole (whatever `send` raises). A retry
            failing as a whole reports its versions instead, keeping what the first one deleted.
    """
    deleted: list[VersionRef] = []
    errors: dict[VersionRef, str] = {}
    pending = list(versions)
    for attempt in range(attempts):
        try:
            answer = send(pending)
        except SluiceError as exc:
            if attempt == 0:
                raise
            errors.update(dict.fromkeys(pending, f"{exc.error_class}: {exc.message}"))
            break
        done, failed = parse_delete_answer(answer, pending)
        deleted.extend(done)
        pending = []
        for ref, (code, reason) in failed.items():
            if code in RETRYABLE_DELETE_CODES and attempt + 1 < attempts:
                pending.append(ref)
            else:
                errors[ref] = reason
        if not pending:
            break
        sleep(base_delay * 2**attempt * random.uniform(0.5, 1.0))
    return deleted, errors


class _BodyReader(io.RawIOBase):
    """A botocore StreamingBody as a raw binary stream; closing it releases the connection."""

    def __init__(self, body: Any, bucket: str, key: str) -> None:
        self._body = body
        self._bucket = bucket
        self._key = key

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        try:
            data = self._body.read(len(view))
        except _BOTO_ERRORS as exc:
            raise translate_error(exc, "GetObject", self._bucket, self._key) from exc
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            # Closing a half-read body closes its connection (urllib3 cannot reuse it) rather
            # than download the rest of the object to reuse it.
            self._body.close()
        super().close()


def _info(bucket: str, key: str, size: int, etag: str, modified: datetime) -> ObjectInfo:
    return ObjectInfo(bucket, key, int(size), etag.strip('"'), modified.astimezone(UTC))


def _version(bucket: str, entry: Mapping[str, Any], marker: bool) -> ObjectVersion:
    """An entry of a ListObjectVersions page (under `Versions`, or `DeleteMarkers`)."""
    return ObjectVersion(
        bucket=bucket,
        key=entry["Key"],
        version_id=entry.get("VersionId"),
        delete_marker=marker,
        is_latest=bool(entry.get("IsLatest")),
        size=int(entry.get("Size", 0)),
        etag=str(entry.get("ETag", "")).strip('"'),
        last_modified=entry["LastModified"].astimezone(UTC),
    )


def _delete_entry(ref: VersionRef) -> dict[str, str]:
    """A DeleteObjects `Objects` entry: the key, and the version id of a version."""
    if ref.version_id is None:
        return {"Key": ref.key}
    return {"Key": ref.key, "VersionId": ref.version_id}


def _answer_date(answer: Mapping[str, Any]) -> datetime:
    """The server's clock when it answered (S3 returns no Last-Modified on a PUT)."""
    date = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    return parsedate_to_datetime(date) if date else datetime.now(UTC)


class S3ObjectStore:
    """`ObjectStore` over S3.

    `client` is a boto3 S3 client; `region`, `endpoint_url` and `credentials` (a callable that
    returns fresh credentials, e.g. `AwsClients.credentials`) configure `arrow_filesystem`.
    `put_file` sends a file above `multipart_threshold` in parts of `part_size` (S3 needs at
    least 5 MiB per part but the last).
    """

    def __init__(
        self,
        client: Any,
        *,
        region: str,
        endpoint_url: str | None = None,
        credentials: Callable[[], Credentials | None] | None = None,
        multipart_threshold: int = 64 * _MiB,
        part_size: int = 16 * _MiB,
        delete_attempts: int = 5,
    ) -> None:
        self._client = client
        self.region = region
        self.endpoint_url = endpoint_url
        self._credentials = credentials
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.delete_attempts = delete_attempts

    def _request(
        self, op: str, bucket: str, key: str | None = None, if_no_bucket: Any = None, **params: Any
    ) -> Any:
        """Send request `op` (`PutObject`, ...) on `Bucket=bucket` (and `Key=key`), translating
        its errors; `if_no_bucket`, when given, is the answer when the bucket does not exist."""
        method = getattr(self._client, _CAMEL.sub("_", op).lower())
        target = {"Bucket": bucket} if key is None else {"Bucket": bucket, "Key": key}
        try:
            return method(**target, **params)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if if_no_bucket is not None and code == "NoSuchBucket":
                return if_no_bucket
            raise translate_error(exc, op, bucket, key) from exc
        except BotoCoreError as exc:
            raise translate_error(exc, op, bucket, key) from exc

    # -- writes ------------------------------------------------------------------------------

    def put(self, bucket: str, key: str, data: bytes) -> ObjectInfo:
        validate_key(bucket, key)
        answer = self._request("PutObject", bucket, key, Body=data)
        return _info(bucket, key, len(data), answer["ETag"], _answer_date(answer))

    def put_file(self, bucket: str, key: str, path: Path) -> ObjectInfo:
        validate_key(bucket, key)
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > self.multipart_threshold:
                return self._put_multipart(bucket, key, f)
            answer = self._request("PutObject", bucket, key, Body=f)
        return _info(bucket, key, size, answer["ETag"], _answer_date(answer))

    def _put_multipart(self, bucket: str, key: str, f: BinaryIO) -> ObjectInfo:
        upload_id = self._request("CreateMultipartUpload", bucket, key)["UploadId"]
        parts: list[dict[str, Any]] = []
        size = 0
        try:
            # One part in memory at a time: memory is bounded by `part_size`.
            while chunk := f.read(self.part_size):
                number = len(parts) + 1
                answer = self._request(
                    "UploadPart", bucket, key, UploadId=upload_id, PartNumber=number, Body=chunk
                )
                parts.append({"ETag": answer["ETag"], "PartNumber": number})
                size += len(chunk)
            answer = self._request(
                "CompleteMultipartUpload",
                bucket,
                key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            # Uploaded parts are billed until the upload is aborted; readers never saw them.
            # If the abort fails too, the bucket's lifecycle rule for incomplete uploads is
            # the backstop.
            with contextlib.suppress(*_BOTO_ERRORS):
                self._client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise
        return _info(bucket, key, size, answer["ETag"], _answer_date(answer))

    def copy(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str) -> ObjectInfo:
        """As the interface, with one CopyObject request (S3 copies at most 5 GB that way)."""
        validate_key(src_bucket, src_key)
        validate_key(dst_bucket, dst_key)
        source = self.head(src_bucket, src_key)
        if (src_bucket, src_key) == (dst_bucket, dst_key):
            return source  # S3 refuses a copy onto itself that changes nothing; nothing to do
        answer = self._request(
            "CopyObject",
            dst_bucket,
            dst_key,
            CopySource={"Bucket": src_bucket, "Key": src_key},
            # If-Match: the size we report is the size of the bytes we copied.
            CopySourceIfMatch=f'"{source.etag}"',
        )
        result = answer["CopyObjectResult"]
        return _info(dst_bucket, dst_key, source.size, result["ETag"], result["LastModified"])

    # -- reads -------------------------------------------------------------------------------

    def open(self, bucket: str, key: str) -> BinaryIO:
        validate_key(bucket, key)
        answer = self._request("GetObject", bucket, key)
        return io.BufferedReader(_BodyReader(answer["Body"], bucket, key), READ_BUFFER)

    def head(self, bucket: str, key: str) -> ObjectInfo:
        validate_key(bucket, key)
        answer = self._request("HeadObject", bucket, key)
        size, etag, modified = answer["ContentLength"], answer["ETag"], answer["LastModified"]
        return _info(bucket, key, size, etag, modified)

    def exists(self, bucket: str, key: str) -> bool:
        try:
            self.head(bucket, key)
        except ObjectNotFound:
            return False
        return True

    def read_tail(
        self, bucket: str, key: str, length: int, *, version_id: str | None = None
    ) -> bytes:
        """As the interface: one GET of a suffix range (`bytes=-length`)."""
        validate_key(bucket, key)
        version = {} if version_id is None else {"VersionId": version_id}
        try:
            answer = self._request("GetObject", bucket, key, Range=f"bytes=-{length}", **version)
        except TerminalError as exc:
            if exc.context.get("code") == "InvalidRange":
                return b""  # S3's answer to a suffix range of an empty object
            raise
        with contextlib.closing(answer["Body"]) as body:
            try:
                data: bytes = body.read()
            except _BOTO_ERRORS as exc:
                raise translate_error(exc, "GetObject", bucket, key) from exc
        return data

    def list(
        self, bucket: str, prefix: str = "", *, start_after: str = "", page_size: int = 1000
    ) -> Iterator[ObjectInfo]:
        validate_bucket(bucket)
        request: dict[str, Any] = {"Prefix": prefix, "MaxKeys": page_size}
        if start_after:
            request["StartAfter"] = start_after
        while True:
            # As the interface: a missing bucket lists nothing.
            empty = {"IsTruncated": False}
            page = self._request("ListObjectsV2", bucket, if_no_bucket=empty, **request)
            for entry in page.get("Contents", []):
                key = entry["Key"]
                if bad_key_reason(key) is None:
                    yield _info(bucket, key, entry["Size"], entry["ETag"], entry["LastModified"])
            if not page.get("IsTruncated"):
                return
            request["ContinuationToken"] = page["NextContinuationToken"]

    def versioned(self, bucket: str) -> bool:
        validate_bucket(bucket)
        answer = self._request("GetBucketVersioning", bucket, if_no_bucket={})
        # Suspended versioning keeps the versions made while it was enabled.
        return answer.get("Status") in ("Enabled", "Suspended")

    def list_versions(
        self, bucket: str, prefix: str = "", *, page_size: int = 1000
    ) -> Iterator[ObjectVersion]:
        validate_bucket(bucket)
        request: dict[str, Any] = {"Prefix": prefix, "MaxKeys": page_size}
        while True:
            empty = {"IsTruncated": False}
            page = self._request("ListObjectVersions", bucket, if_no_bucket=empty, **request)
            entries = [
                _version(bucket, entry, marker)
                for marker, kind in ((False, "Versions"), (True, "DeleteMarkers"))
                for entry in page.get(kind, [])
                if bad_key_reason(entry["Key"]) is None
            ]
            # S3 lists a page's versions and delete markers apart, each in key order.
            yield from sorted(entries, key=lambda v: v.key)
            if not page.get("IsTruncated"):
                return
            request["KeyMarker"] = page["NextKeyMarker"]
            request["VersionIdMarker"] = page.get("NextVersionIdMarker") or ""

    # -- deletes -----------------------------------------------------------------------------

    def delete_batch(self, bucket: str, keys: Sequence[str]) -> DeleteResult:
        """As the interface; a missing bucket holds none of the keys, so all count as deleted."""
        validate_batch(bucket, keys)
        done = self.delete_versions(bucket, [VersionRef(key) for key in dict.fromkeys(keys)])
        errors = {ref.key: reason for ref, reason in done.errors.items()}
        return DeleteResult(deleted=tuple(ref.key for ref in done.deleted), errors=errors)

    def delete_versions(self, bucket: str, versions: Sequence[VersionRef]) -> VersionDeleteResult:
        """As the interface; a missing bucket holds none of them, so all count as deleted."""
        validate_batch(bucket, versions)
        validate_bucket(bucket)
        errors: dict[VersionRef, str] = {}
        valid: list[VersionRef] = []
        for ref in dict.fromkeys(versions):
            if (reason := bad_key_reason(ref.key)) is None:
                valid.append(ref)
            else:
                errors[ref] = reason

        def send(batch: list[VersionRef]) -> DeleteAnswer:
            objects = [_delete_entry(ref) for ref in batch]
            request = {"Objects": objects, "Quiet": False}
            answer: DeleteAnswer = self._request(
                "DeleteObjects", bucket, if_no_bucket={"Deleted": objects}, Delete=request
            )
            return answer

        if not valid:
            return VersionDeleteResult(errors=errors)
        deleted, key_errors = delete_with_retries(send, valid, attempts=self.delete_attempts)
        errors.update(key_errors)
        return VersionDeleteResult(deleted=tuple(deleted), errors=errors)

    # -- arrow -------------------------------------------------------------------------------

    def arrow_filesystem(self) -> tuple[pafs.FileSystem, str]:
        """pyarrow's S3 filesystem (paths `bucket/key`), with credentials fetched now."""
        options: dict[str, Any] = {"region": self.region}
        if self.endpoint_url:
            endpoint = urlsplit(self.endpoint_url)
            options["endpoint_override"] = endpoint.netloc + endpoint.path.rstrip("/")
            options["scheme"] = endpoint.scheme or "https"
        credentials = self._credentials() if self._credentials else None
        if credentials is not None:
            options["access_key"] = credentials.access_key
            options["secret_key"] = credentials.secret_key
            options["session_token"] = credentials.token
        return pafs.S3FileSystem(**options), ""
