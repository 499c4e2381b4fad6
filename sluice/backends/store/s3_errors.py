"""The S3 object store's translation of botocore's errors into sluice's: `translate_error`, the
one helper that reads an S3 error code, HTTP status or botocore exception class, and the tables
it reads them by. It decides whether a request may succeed on a retry (`TransientError`,
`BackendBusy`), names a missing object (`ObjectNotFound`), points at the environment's
configuration (`ConfigError`, with the hint that fixes it), or fails for good (`TerminalError`,
with the IAM action an AccessDenied lacks).
"""

from __future__ import annotations

from typing import Any

from botocore import exceptions as boto_errors
from botocore.exceptions import ClientError

from sluice.errors import (
    BackendBusy,
    ConfigError,
    ObjectNotFound,
    SluiceError,
    TerminalError,
    TransientError,
)

_THROTTLED = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "RequestThrottled"}
)
_DENIED = frozenset(
    {"AccessDenied", "AllAccessDisabled", "ExpiredToken", "InvalidAccessKeyId", "InvalidToken"}
)
# A missing bucket is a missing object to these (they read one), a ConfigError to the others.
_READS = frozenset({"GetObject", "HeadObject"})
# The IAM action each request needs, for the hint of an AccessDenied.
_ACTIONS = {
    "GetObject": "s3:GetObject",
    "HeadObject": "s3:GetObject",
    "ListObjectsV2": "s3:ListBucket",
    "ListObjectVersions": "s3:ListBucketVersions",
    "GetBucketVersioning": "s3:GetBucketVersioning",
    "DeleteObjects": "s3:DeleteObject (s3:DeleteObjectVersion for versions)",
    "CopyObject": "s3:GetObject on the source and s3:PutObject",
}
_NO_CREDENTIALS = (
    boto_errors.NoCredentialsError,
    boto_errors.PartialCredentialsError,
    boto_errors.CredentialRetrievalError,
)
_CONNECTION = (
    boto_errors.ConnectionError,  # endpoint unreachable, connection closed, proxy
    boto_errors.ConnectTimeoutError,
    boto_errors.ReadTimeoutError,
    boto_errors.ResponseStreamingError,
    boto_errors.IncompleteReadError,
    boto_errors.FlexibleChecksumError,  # bytes damaged in transit: reading again may succeed
)


def translate_error(exc: Exception, op: str, bucket: str, key: str | None = None) -> SluiceError:
    """The sluice error for a botocore error raised by request `op` on `bucket` (and `key`)."""
    where = f"s3://{bucket}/{key}" if key is not None else f"s3://{bucket}/"
    if not isinstance(exc, ClientError):
        if isinstance(exc, _NO_CREDENTIALS):
            return ConfigError(
                f"{op} {where}: no usable AWS credentials ({exc})",
                hint="set the profile (or role_arn) of this environment in sluice.toml, "
                "or log in to AWS (aws sso login)",
                bucket=bucket,
                key=key,
            )
        if isinstance(exc, _CONNECTION):
            return TransientError(f"{op} {where}: S3 unreachable ({exc})", bucket=bucket, key=key)
        return TerminalError(f"{op} {where} failed: {exc}", bucket=bucket, key=key)

    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    if code in ("NoSuchKey", "404", "NotFound") and key is not None:
        return ObjectNotFound(f"no such object: {where}", bucket=bucket, key=key)
    if code == "NoSuchBucket":
        missing = str(error.get("BucketName") or bucket)
        hint = (
            f"create bucket {missing!r}, or fix the bucket names of the environment in sluice.toml"
        )
        if op in _READS and key is not None:
            text = f"no such object: {where} (bucket {missing!r} does not exist)"
            return ObjectNotFound(text, hint=hint, bucket=bucket, key=key)
        return ConfigError(
            f"{op} {where}: bucket {missing!r} does not exist", hint=hint, bucket=missing
        )

    text = f"{op} {where} failed: {code or status}: {error.get('Message') or 'no message'}"
    context: dict[str, Any] = {"bucket": bucket, "key": key, "operation": op, "code": code}
    if code in _THROTTLED:
        return BackendBusy(
            text, hint="S3 throttles this prefix: retry later or with fewer workers", **context
        )
    if code == "PreconditionFailed":
        return TransientError(f"{text} (the object changed during the request)", **context)
    if status >= 500 or code in ("InternalError", "ServiceUnavailable", "RequestTimeout"):
        return TransientError(text, **context)
    if code in _DENIED or status == 403:
        action = _ACTIONS.get(op, "s3:PutObject")
        hint = (
            f"check that the AWS profile or role of this environment (sluice.toml) has {action} "
            f"on arn:aws:s3:::{bucket}/{key or '*'} (without s3:ListBucket, S3 answers 403 "
            "for a missing object)"
        )
        return TerminalError(text, hint=hint, **context)
    return TerminalError(text, **context)
