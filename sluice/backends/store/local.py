"""The object store on a local directory: bucket `b` is `<root>/b/`, a key is a path under it.

Differences from S3, all inherent to a filesystem:

- `a` and `a/b` cannot both be objects (a name is a file or a directory); writing one over the
  other raises `InvalidKey` naming the conflict.
- A key segment is at most 255 bytes (a file name), a key at most 1024 bytes (as on S3).
- ETags are the md5 of the bytes (as S3's single-part ETag, without quotes). Files written by
  this store carry it in an extended attribute, checked against size and mtime, so another
  process lists and heads them without reading their bytes; other files are hashed once per
  process and version.
- No versions: a bucket is never versioned, an object has one version (id None), and a delete
  removes it for good.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
import threading
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, NoReturn

import pyarrow.fs as pafs

from sluice.backends.store.base import (
    TMP_PREFIX,
    DeleteResult,
    ObjectInfo,
    ObjectVersion,
    VersionDeleteResult,
    VersionRef,
    bad_key_reason,
    invalid_key,
    validate_batch,
    validate_bucket,
    validate_key,
)
from sluice.errors import InvalidKey, ObjectNotFound

CHUNK = 1 << 20
_ETAG_XATTR = "user.sluice.etag"
_ETAG_CACHE_SIZE = 100_000

# (path, size, mtime_ns, inode, device): a rewrite changes the inode (atomic put) or the mtime.
_Version = tuple[str, int, int, int, int]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


class LocalObjectStore:
    """`ObjectStore` over a directory; safe to share between threads and processes."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._etags: dict[_Version, str] = {}
        self._buckets: dict[str, Path] = {}
        self._lock = threading.Lock()

    # -- paths -------------------------------------------------------------------------------

    def _bucket_dir(self, bucket: str) -> Path:
        validate_bucket(bucket)
        return self.root / bucket

    def _path(self, bucket: str, key: str) -> Path:
        """The path of an object, after checking the bucket and key cannot escape the bucket."""
        validate_key(bucket, key)
        bucket_dir = self.root / bucket
        path = bucket_dir / key
        if not path.resolve().is_relative_to(self._resolved_bucket(bucket)):
            reason = "the key resolves outside its bucket (through a symlink)"
            raise invalid_key(bucket, key, reason)
        return path

    def _resolved_bucket(self, bucket: str) -> Path:
        # Resolved once: resolving walks every directory of the path (a syscall each), and a
        # bucket later swapped for a symlink elsewhere only makes the check stricter.
        resolved = self._buckets.get(bucket)
        if resolved is None:
            resolved = self._buckets[bucket] = (self.root / bucket).resolve()
        return resolved

    # -- ETags -------------------------------------------------------------------------------

    def _remember(self, version: _Version, etag: str) -> None:
        with self._lock:
            if len(self._etags) >= _ETAG_CACHE_SIZE:
                del self._etags[next(iter(self._etags))]
            self._etags[version] = etag

    def _etag(self, path: Path, st: os.stat_result) -> str:
        version = (str(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
        if (etag := self._etags.get(version)) is not None:
            return etag
        try:
            md5, size, mtime_ns = os.getxattr(path, _ETAG_XATTR).decode().split()
            if int(size) == st.st_size and int(mtime_ns) == st.st_mtime_ns:
                etag = md5
        except (OSError, ValueError):
            pass
        if etag is None:
            digest = hashlib.md5(usedforsecurity=False)
            for chunk in _file_chunks(path):
                digest.update(chunk)
            etag = digest.hexdigest()
        self._remember(version, etag)
        return etag

    def _info(self, bucket: str, key: str, path: Path, st: os.stat_result) -> ObjectInfo:
        modified = datetime.fromtimestamp(st.st_mtime_ns / 1e9, tz=UTC)
        return ObjectInfo(bucket, key, st.st_size, self._etag(path, st), modified)

    # -- writes ------------------------------------------------------------------------------

    def _make_parents(self, bucket: str, key: str, path: Path) -> None:
        missing: list[Path] = []
        parent = path.parent
        while not parent.is_dir():
            missing.append(parent)
            parent = parent.parent
        for directory in reversed(missing):
            try:
                directory.mkdir()
            except FileExistsError:
                if not directory.is_dir():
                    self._conflict(bucket, key, directory)
            except NotADirectoryError:
                self._conflict(bucket, key, directory.parent)
            # The new entry must be durable too, or a crash could lose the acknowledged object.
            _fsync_dir(directory.parent)

    def _conflict(self, bucket: str, key: str, other: Path) -> NoReturn:
        name = other.relative_to(self.root / bucket).as_posix()
        raise InvalidKey(
            f"cannot write s3://{bucket}/{key}: {name!r} is both an object and a prefix of "
            "another, which a local directory cannot hold",
            bucket=bucket,
            key=key,
        )

    def _open_temp(self, bucket: str, key: str, path: Path) -> tuple[int, Path]:
        attempts = 0
        while True:
            tmp = path.parent / f"{TMP_PREFIX}{secrets.token_hex(8)}"
            try:
                self._make_parents(bucket, key, path)
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                return os.open(tmp, flags, 0o666), tmp
            except FileNotFoundError:
                # A concurrent delete_batch removed a parent we made while it was still
                # empty: make it again.
                attempts += 1
                if attempts == 100:
                    raise

    def _write(self, bucket: str, key: str, chunks: Iterable[bytes]) -> ObjectInfo:
        path = self._path(bucket, key)
        fd, tmp = self._open_temp(bucket, key, path)
        try:
            digest = hashlib.md5(usedforsecurity=False)
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    digest.update(chunk)
                    f.write(chunk)
                f.flush()
                st = os.fstat(fd)
                etag = digest.hexdigest()
                try:
                    tag = f"{etag} {st.st_size} {st.st_mtime_ns}".encode()
                    os.setxattr(fd, _ETAG_XATTR, tag)
                except OSError:
                    pass  # no user xattrs on this filesystem: other processes hash the file
                os.fsync(fd)
            try:
                os.replace(tmp, path)
            except IsADirectoryError:
                self._conflict(bucket, key, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
        self._remember((str(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev), etag)
        return self._info(bucket, key, path, st)

    def put(self, bucket: str, key: str, data: bytes) -> ObjectInfo:
        return self._write(bucket, key, [data])

    def put_file(self, bucket: str, key: str, path: Path) -> ObjectInfo:
        return self._write(bucket, key, _file_chunks(path))

    def copy(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str) -> ObjectInfo:
        with self.open(src_bucket, src_key) as src:
            return self._write(dst_bucket, dst_key, iter(lambda: src.read(CHUNK), b""))

    # -- reads -------------------------------------------------------------------------------

    def _not_found(self, bucket: str, key: str) -> ObjectNotFound:
        return ObjectNotFound(f"no such object: s3://{bucket}/{key}", bucket=bucket, key=key)

    def open(self, bucket: str, key: str) -> BinaryIO:
        path = self._path(bucket, key)
        try:
            return path.open("rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise self._not_found(bucket, key) from None

    def head(self, bucket: str, key: str) -> ObjectInfo:
        path = self._path(bucket, key)
        try:
            st = path.stat()
            if stat.S_ISREG(st.st_mode):
                return self._info(bucket, key, path, st)
        except (FileNotFoundError, NotADirectoryError):
            pass
        raise self._not_found(bucket, key)

    def exists(self, bucket: str, key: str) -> bool:
        return self._path(bucket, key).is_file()

    def read_tail(
        self, bucket: str, key: str, length: int, *, version_id: str | None = None
    ) -> bytes:
        if version_id is not None:
            validate_key(bucket, key)
            raise ObjectNotFound(
                f"no version {version_id!r} of s3://{bucket}/{key}: the local store keeps none",
                bucket=bucket,
                key=key,
            )
        with self.open(bucket, key) as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - length))
            return f.read(length)

    def list(
        self, bucket: str, prefix: str = "", *, start_after: str = "", page_size: int = 1000
    ) -> Iterator[ObjectInfo]:
        """As the interface; memory is bounded by the largest directory, not by `page_size`."""
        bucket_dir = self._bucket_dir(bucket)
        if bucket_dir.is_dir():
            yield from self._walk(bucket, bucket_dir, bucket_dir.resolve(), "", prefix, start_after)

    def _walk(
        self, bucket: str, directory: Path, real_bucket: Path, base: str, prefix: str, after: str
    ) -> Iterator[ObjectInfo]:
        # A directory `d` holds exactly the keys starting with `d/`, so sorting it as `d/`
        # among the file names gives S3's order ('a-b' < 'a/b' < 'a.b' < 'a0').
        try:
            with os.scandir(directory) as it:
                named = sorted(
                    (e.name + "/" if e.is_dir(follow_symlinks=False) else e.name, e) for e in it
                )
        except (FileNotFoundError, NotADirectoryError):
            return  # removed while we listed: it holds nothing now
        for name, entry in named:
            key = base + name
            if not (key.startswith(prefix) or prefix.startswith(key)):
                continue
            if name.endswith("/"):
                # Every key below starts with `key`: skip the subtree when all of it sorts
                # at or before `after`.
                if key > after or after.startswith(key):
                    yield from self._walk(bucket, Path(entry.path), real_bucket, key, prefix, after)
                continue
            # Temporary files and names no key can have (backslash, not UTF-8) are not objects.
            if key <= after or not key.startswith(prefix) or bad_key_reason(key) is not None:
                continue
            path = Path(entry.path)
            try:
                if entry.is_symlink() and not path.resolve().is_relative_to(real_bucket):
                    continue
                st = entry.stat()
                if not stat.S_ISREG(st.st_mode):
                    continue
                info = self._info(bucket, key, path, st)
            except FileNotFoundError:
                continue  # deleted while we listed
            yield info

    def versioned(self, bucket: str) -> bool:
        validate_bucket(bucket)
        return False

    def list_versions(
        self, bucket: str, prefix: str = "", *, page_size: int = 1000
    ) -> Iterator[ObjectVersion]:
        for info in self.list(bucket, prefix, page_size=page_size):
            yield ObjectVersion(
                bucket=bucket,
                key=info.key,
                version_id=None,
                delete_marker=False,
                is_latest=True,
                size=info.size,
                etag=info.etag,
                last_modified=info.last_modified,
            )

    # -- deletes -----------------------------------------------------------------------------

    def delete_batch(self, bucket: str, keys: Sequence[str]) -> DeleteResult:
        validate_batch(bucket, keys)
        bucket_dir = self._bucket_dir(bucket)
        deleted: list[str] = []
        errors: dict[str, str] = {}
        for key in keys:
            try:
                path = self._path(bucket, key)
                path.unlink()
            except InvalidKey as exc:
                errors[key] = exc.context.get("reason", exc.message)
                continue
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                pass  # no such object (a directory is only a prefix): deleted, as on S3
            except OSError as exc:
                errors[key] = f"{type(exc).__name__}: {exc.strerror or exc}"
                continue
            deleted.append(key)
            # Empty prefixes disappear on S3; remove the directories that held only this key.
            parent = path.parent
            while parent != bucket_dir:
                try:
                    parent.rmdir()
                except OSError:
                    break
                parent = parent.parent
        return DeleteResult(deleted=tuple(deleted), errors=errors)

    def delete_versions(self, bucket: str, versions: Sequence[VersionRef]) -> VersionDeleteResult:
        validate_batch(bucket, versions)
        current = [v.key for v in versions if v.version_id is None]
        done = self.delete_batch(bucket, current)
        errors = {VersionRef(k): reason for k, reason in done.errors.items()}
        for v in versions:
            if v.version_id is not None:
                errors[v] = f"NoSuchVersion: the local store keeps no version {v.version_id!r}"
        deleted = tuple(VersionRef(k) for k in done.deleted)
        return VersionDeleteResult(deleted=deleted, errors=errors)

    def arrow_filesystem(self) -> tuple[pafs.FileSystem, str]:
        return pafs.LocalFileSystem(), f"{self.root}/"
