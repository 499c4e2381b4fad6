"""The object store interface: what every store (local directory, S3) provides.

Keys are `/`-separated and relative to a bucket. Every implementation refuses a key that is
empty, absolute, contains a `.` or `..` segment, a backslash or a NUL byte (`InvalidKey`), so
that no key can name anything outside its bucket, on any backend.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Protocol

import pyarrow.fs as pafs

MAX_DELETE_BATCH = 1000


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

    def list(
        self, bucket: str, prefix: str = "", *, start_after: str = "", page_size: int = 1000
    ) -> Iterator[ObjectInfo]:
        """Objects whose key starts with `prefix`, in key order, fetched a page at a time.

        Memory is bounded by `page_size` whatever the number of objects; `start_after` resumes
        a listing after a key. A missing bucket or prefix lists nothing.
        """
        ...

    def delete_batch(self, bucket: str, keys: Sequence[str]) -> DeleteResult:
        """Delete up to MAX_DELETE_BATCH keys in one request; per-key failures are reported.

        Raises:
            BatchTooLarge: more than MAX_DELETE_BATCH keys.
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
