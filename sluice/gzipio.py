"""Gzip streams through ISA-L (about three times zlib's speed on this data), typed."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, cast

from isal import igzip, igzip_lib

# What a corrupt (not merely truncated) gzip stream raises while it is read.
CORRUPT_GZIP_ERRORS: tuple[type[Exception], ...] = (
    cast(type[Exception], igzip_lib.IsalError),
    igzip.BadGzipFile,
)


def gzip_reader(fileobj: BinaryIO) -> BinaryIO:
    return cast(BinaryIO, igzip.IGzipFile(fileobj=fileobj, mode="rb"))  # type: ignore[no-untyped-call]


def gzip_writer(path: Path, level: int = 1) -> BinaryIO:
    """Level 1: raw objects and quarantine files are written once and read rarely."""
    return cast(BinaryIO, igzip.IGzipFile(path, "wb", compresslevel=level))  # type: ignore[no-untyped-call]
