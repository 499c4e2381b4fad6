"""The object store interface: what every store (local directory, S3) provides.

Keys are `/`-separated and relative to a bucket. Every implementation checks buckets and keys
with `validate_key` / `validate_bucket` before it touches anything, so each backend refuses
exactly the same names (`InvalidKey`): no key can name anything outside its bucket (S3 itself
would store `../x`; sluice never does), and a key written on one backend can be written on any.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Protocol

import pyarrow.fs as pafs

from sluice.errors import BatchTooLarge, InvalidKey

MAX_DELETE_BATCH = 1000
# S3's limit on a key; the segment limit is a file name's, kept on every backend so that any
# key can move between them.
MAX_KEY_BYTES = 1024
MAX_SEGMENT_BYTES = 255
# Segments reserved for the local store's temporary files (refused everywhere for the same reason).
TMP_PREFIX = ".sluice-tmp-"
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def bad_key_reason(key: str) -> str | None:
    """Why `key` cannot name an object on any backend, or None when it can."""
    if not key:
        return "the key is empty"
    if key.startswith("/"):
        return "the key is absolute"
    if key.endswith("/"):
        return "an object key cannot end with '/'"
    if "\\" in key:
        return "the key contains a backslash"
    if "\x00" in key:
        return "the key contains a NUL byte"
    try:
        if len(key.encode("utf-8")) > MAX_KEY_BYTES:
            return f"the key is longer than {MAX_KEY_BYTES} bytes"
    except UnicodeEncodeError:
        return "the key is not valid UTF-8"
    for segment in key.split("/"):
        if not segment:
            return "the key has an empty segment ('//')"
        if segment in (".", ".."):
            return f"the key has a {segment!r} segment"
        if segment.startswith(TMP_PREFIX):
            return f"segments starting with {TMP_PREFIX!r} are reserved for temporary files"
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            return f"a segment is longer than {MAX_SEGMENT_BYTES} bytes"
    return None


def validate_bucket(bucket: str) -> None:
    """Check a bucket name (S3's rules: 3-63 lowercase letters, digits, '-' or '.').

    Raises:
        InvalidKey: the name is malformed (context: bucket).
    """
    if not _BUCKET_RE.fullmatch(bucket) or ".." in bucket:
        raise InvalidKey(
            f"invalid bucket name {bucket!r}: use 3-63 lowercase letters, digits, '-' or '.'",
            bucket=bucket,
        )


def validate_key(bucket: str, key: str) -> None:
    """Check a bucket and a key before any backend touches them.

    Raises:
        InvalidKey: the bucket is malformed (context: bucket), or the key is (context: bucket,
            key, reason).
    """
    validate_bucket(bucket)
    if (reason := bad_key_reason(key)) is not None:
        raise invalid_key(bucket, key, reason)


def validate_batch(bucket: str, keys: Sequence[object]) -> None:
    """Check the size of a delete batch of keys or versions (S3's limit, kept by every backend).

    Raises:
        BatchTooLarge: more than MAX_DELETE_BATCH keys.
    """
    if len(keys) > MAX_DELETE_BATCH:
        raise BatchTooLarge(
            f"{len(keys)} keys in one delete batch; the limit is {MAX_DELETE_BATCH}",
            bucket=bucket,
            count=len(keys),
            limit=MAX_DELETE_BATCH,
        )


def invalid_key(bucket: str, key: str, reason: str) -> InvalidKey:
    """The error for a refused key, with the reason in both the message and the context."""
    return InvalidKey(
        f"invalid key {key!r} for s3://{bucket}/: {reason}", bucket=bucket, key=key, reason=reason
    )


@dataclass(frozen=True)
class ObjectInfo:
    bucket: str
    key: str
    size: int
    etag: str
    last_modified: datetime

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class DeleteResult:
    """Outcome of one batch delete: a key is either deleted or in `errors` with its reason.

    Deleting a key that does not exist counts as deleted (as on S3).
    """

    deleted: tuple[str, ...] = ()
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True)
class VersionRef:
    """One version of an object to delete; `version_id` None names the current object (a plain
    delete, which on a versioned bucket only adds a delete marker)."""

    key: str
    version_id: str | None = None


@dataclass(frozen=True)
class ObjectVersion:
    """One stored version of an object, or a delete marker (no bytes: size 0, no ETag).

    A store without versions has exactly one per object: its current bytes, `version_id` None.
    """

    bucket: str
    key: str
    version_id: str | None
    delete_marker: bool
    is_latest: bool
    size: int
    etag: str
    last_modified: datetime

    @property
    def ref(self) -> VersionRef:
        return VersionRef(self.key, self.version_id)


@dataclass(frozen=True)
class VersionDeleteResult:
    """Outcome of one batch delete of versions: each is either deleted or in `errors`."""

    deleted: tuple[VersionRef, ...] = ()
    errors: dict[VersionRef, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


class ObjectStore(Protocol):
    """Buckets of immutable-per-version objects."""

    def put(self, bucket: str, key: str, data: bytes) -> ObjectInfo:
        """Write an object atomically: readers see the old bytes or the new, never a mix.

        Raises:
            InvalidKey: the key or bucket is malformed or would escape the bucket.
        """
        ...

    def put_file(self, bucket: str, key: str, path: Path) -> ObjectInfo:
        """Upload a local file atomically (same guarantees as `put`)."""
        ...

    def open(self, bucket: str, key: str) -> BinaryIO:
        """Stream an object's bytes (the caller closes the stream).

        Raises:
            ObjectNotFound: no such object.
            InvalidKey: malformed key.
        """
        ...

    def head(self, bucket: str, key: str) -> ObjectInfo:
        """Size, ETag and last-modified time of an object.

        The ETag changes whenever the object's bytes change.

        Raises:
            ObjectNotFound: no such object.
            InvalidKey: malformed key.
        """
        ...

    def exists(self, bucket: str, key: str) -> bool: ...

    def read_tail(
        self, bucket: str, key: str, length: int, *, version_id: str | None = None
    ) -> bytes:
        """The last `length` bytes of an object (all of it when shorter), in one request; of
        version `version_id` when given.

        Raises:
            ObjectNotFound: no such object, or no such version (a store without versions has
                none but the current one, `None`).
            InvalidKey: malformed key.
        """
        ...

    def list(
        self, bucket: str, prefix: str = "", *, start_after: str = "", page_size: int = 1000
    ) -> Iterator[ObjectInfo]:
        """Objects whose key starts with `prefix`, in key order, fetched a page at a time.

        Memory is bounded by `page_size` whatever the number of objects; `start_after` resumes
        a listing after a key. A missing bucket or prefix lists nothing.
        """
        ...

    def versioned(self, bucket: str) -> bool:
        """Whether the bucket keeps earlier versions of its objects (versioning enabled, or
        suspended with versions kept). A missing bucket keeps nothing: False.

        Raises:
            InvalidKey: malformed bucket name.
        """
        ...

    def list_versions(
        self, bucket: str, prefix: str = "", *, page_size: int = 1000
    ) -> Iterator[ObjectVersion]:
        """Every version and delete marker of the objects whose key starts with `prefix`, in
        key order, fetched a page at a time (memory bounded by `page_size`). A store without
        versions yields each object once, `version_id` None. A missing bucket lists nothing.
        """
        ...

    def delete_batch(self, bucket: str, keys: Sequence[str]) -> DeleteResult:
        """Delete up to MAX_DELETE_BATCH keys in one request; per-key failures are reported.

        Raises:
            BatchTooLarge: more than MAX_DELETE_BATCH keys.
        """
        ...

    def delete_versions(self, bucket: str, versions: Sequence[VersionRef]) -> VersionDeleteResult:
        """Delete up to MAX_DELETE_BATCH versions in one request, for good (a version deleted by
        id leaves no delete marker); per-version failures are reported, as in `delete_batch`.
        A version id None deletes the current object as `delete_batch` does; on a store without
        versions, any other id is a failure (no such version).

        Raises:
            BatchTooLarge: more than MAX_DELETE_BATCH versions.
        """
        ...

    def copy(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str) -> ObjectInfo:
        """Copy an object (server-side where the backend can).

        Raises:
            ObjectNotFound: no such source object.
        """
        ...

    def arrow_filesystem(self) -> tuple[pafs.FileSystem, str]:
        """A pyarrow filesystem over the buckets and the path prefix that names bucket roots.

        `f"{root}{bucket}/{key}"` is the object's path in that filesystem. Query engines and
        Parquet readers use it, so they never learn which backend they read.
        """
        ...
