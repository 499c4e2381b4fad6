"""The object store contract: every `ObjectStore` implementation passes these tests.

Tests speak only the interface, except the local-only and S3-only sections at the end. A
backend that needs its buckets created first (S3) creates `BUCKET` and `OTHER` in its fixture,
fresh for each test.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.backends.store import local as local_store
from sluice.backends.store.base import MAX_DELETE_BATCH, TMP_PREFIX, ObjectStore, VersionRef
from sluice.backends.store.local import LocalObjectStore
from sluice.backends.store.s3 import (
    S3ObjectStore,
    delete_with_retries,
    parse_delete_answer,
)
from sluice.backends.store.s3_errors import translate_error
from sluice.errors import (
    BackendBusy,
    BatchTooLarge,
    ConfigError,
    InvalidKey,
    ObjectNotFound,
    SluiceError,
    TerminalError,
    TransientError,
)
from tests.conftest import deny_deletes

BUCKET = "bucket"
OTHER = "other-bucket"
STORES = ["local", pytest.param("s3", marks=pytest.mark.aws)]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalObjectStore(tmp_path / "buckets")
    if request.param == "s3":
        s3: ObjectStore = request.getfixturevalue("s3")
        return s3
    raise AssertionError(f"unknown store {request.param}")


def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.node.callspec.params["store"]
    return kind


def keys_of(
    store: ObjectStore,
    bucket: str = BUCKET,
    prefix: str = "",
    *,
    start_after: str = "",
    page_size: int = 1000,
) -> list[str]:
    listing = store.list(bucket, prefix, start_after=start_after, page_size=page_size)
    return [info.key for info in listing]


def read(store: ObjectStore, key: str, bucket: str = BUCKET) -> bytes:
    with store.open(bucket, key) as f:
        return f.read()


# -- put / open / head ---------------------------------------------------------------------


def test_put_open_head_roundtrip(store: ObjectStore) -> None:
    data = b'{"event": 1}\n' * 100
    before = datetime.now(UTC) - timedelta(minutes=5)
    put = store.put(BUCKET, "raw/x/obj.jsonl", data)
    head = store.head(BUCKET, "raw/x/obj.jsonl")

    assert read(store, "raw/x/obj.jsonl") == data
    assert (put.bucket, put.key, put.size) == (BUCKET, "raw/x/obj.jsonl", len(data))
    assert (head.size, head.etag) == (put.size, put.etag)
    assert head.uri == f"s3://{BUCKET}/raw/x/obj.jsonl"
    assert head.last_modified.utcoffset() == timedelta(0)
    assert before < head.last_modified < datetime.now(UTC) + timedelta(minutes=5)
    assert store.exists(BUCKET, "raw/x/obj.jsonl")


def test_open_streams(store: ObjectStore) -> None:
    store.put(BUCKET, "k", b"abcdef")
    with store.open(BUCKET, "k") as f:
        assert f.read(2) == b"ab"
        assert f.read() == b"cdef"


def test_empty_object(store: ObjectStore) -> None:
    info = store.put(BUCKET, "empty", b"")
    assert info.size == 0
    assert read(store, "empty") == b""
    assert store.head(BUCKET, "empty").etag == info.etag


def test_etag_stable_for_same_bytes_and_changes_with_new_bytes(store: ObjectStore) -> None:
    first = store.put(BUCKET, "k", b"one")
    again = store.put(BUCKET, "k", b"one")
    other_key = store.put(BUCKET, "k2", b"one")
    changed = store.put(BUCKET, "k", b"two")

    assert first.etag == again.etag == other_key.etag
    assert changed.etag != first.etag
    assert store.head(BUCKET, "k").etag == changed.etag
    assert read(store, "k") == b"two"


def test_put_file_multi_megabyte(store: ObjectStore, tmp_path: Path) -> None:
    data = os.urandom(5 * 1024 * 1024 + 17)
    src = tmp_path / "upload.bin"
    src.write_bytes(data)

    info = store.put_file(BUCKET, "big/upload.bin", src)

    assert info.size == len(data)
    assert store.head(BUCKET, "big/upload.bin").etag == info.etag
    assert read(store, "big/upload.bin") == data
    assert store.put(BUCKET, "big/same.bin", data).etag == info.etag


@pytest.mark.parametrize(
    "key",
    ["dir with space/file name.txt", "ünïcödé/日本語.json", "emoji/🙂 ok", "a=1/b=2/c+d%20.gz"],
)
def test_unicode_and_space_keys(store: ObjectStore, key: str) -> None:
    store.put(BUCKET, key, key.encode())
    assert read(store, key) == key.encode()
    assert store.head(BUCKET, key).key == key
    assert keys_of(store) == [key]


def test_readers_see_old_or_new_bytes_never_a_mix(store: ObjectStore) -> None:
    payloads = [bytes([c]) * 256 * 1024 for c in b"ABCD"]
    store.put(BUCKET, "hot", payloads[0])
    stop = threading.Event()

    def writer() -> None:
        for data in itertools.islice(itertools.cycle(payloads), 40):
            store.put(BUCKET, "hot", data)
        stop.set()

    thread = threading.Thread(target=writer)
    thread.start()
    while not stop.is_set():
        data = read(store, "hot")
        assert data in payloads
    thread.join()
    assert keys_of(store) == ["hot"]


# -- missing objects -----------------------------------------------------------------------


def test_missing_object(store: ObjectStore) -> None:
    store.put(BUCKET, "there/a", b"x")
    for key in ["nope", "there/b", "there", "there/a/deeper"]:
        with pytest.raises(ObjectNotFound) as exc:
            store.open(BUCKET, key)
        assert exc.value.context == {"bucket": BUCKET, "key": key}
        assert f"s3://{BUCKET}/{key}" in str(exc.value)
        with pytest.raises(ObjectNotFound):
            store.head(BUCKET, key)
        with pytest.raises(ObjectNotFound):
            store.copy(BUCKET, key, BUCKET, "dst")
        assert not store.exists(BUCKET, key)
    assert not store.exists(BUCKET, "dst")


# -- hostile keys and buckets --------------------------------------------------------------

HOSTILE_KEYS = [
    "",
    ".",
    "..",
    "../x",
    "a/../../x",
    "a/./b",
    "/abs",
    "a//b",
    "a\\b",
    "..\\x",
    "a\x00b",
    "trailing/",
    "x" * 2000,
    "a/" + "s" * 256,
    f"a/{TMP_PREFIX}x",
]
BAD_BUCKETS = ["..", "a/b", "", "UPPER", "ab", "../bucket", "bucket/..", "b" * 64, "-lead"]


def _ops(store: ObjectStore, bucket: str, key: str) -> list[Callable[[], object]]:
    return [
        lambda: store.put(bucket, key, b"x"),
        lambda: store.open(bucket, key),
        lambda: store.head(bucket, key),
        lambda: store.exists(bucket, key),
    ]


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=repr)
def test_hostile_keys_refused(store: ObjectStore, key: str) -> None:
    for op in _ops(store, BUCKET, key):
        with pytest.raises(InvalidKey) as exc:
            op()
        assert exc.value.context["key"] == key
        assert exc.value.context["reason"] in exc.value.message
    assert keys_of(store) == []


def test_copy_refuses_hostile_destination(store: ObjectStore) -> None:
    store.put(BUCKET, "src", b"x")
    with pytest.raises(InvalidKey):
        store.copy(BUCKET, "src", BUCKET, "../escaped")
    with pytest.raises(InvalidKey):
        store.copy(BUCKET, "../src", BUCKET, "dst")
    assert keys_of(store) == ["src"]


@pytest.mark.parametrize("bucket", BAD_BUCKETS, ids=repr)
def test_bad_bucket_names_refused(store: ObjectStore, bucket: str) -> None:
    for op in _ops(store, bucket, "key"):
        with pytest.raises(InvalidKey):
            op()
    with pytest.raises(InvalidKey):
        list(store.list(bucket))


def test_list_prefix_cannot_escape_bucket(store: ObjectStore) -> None:
    store.put(OTHER, "secret", b"x")
    assert keys_of(store, BUCKET, "../") == []
    assert keys_of(store, BUCKET, f"../{OTHER}/") == []


# -- list ----------------------------------------------------------------------------------


def test_list_prefix(store: ObjectStore) -> None:
    keys = [
        "raw/json_telemetry/year=2025/a.gz",
        "raw/json_telemetry/year=2025/b.gz",
        "raw/json_tel.gz",
        "raw/json.gz",
        "raw/otlp_logs/c.gz",
        "rawx",
        "verified/x.parquet",
    ]
    for key in keys:
        store.put(BUCKET, key, key.encode())

    def under(prefix: str) -> list[str]:
        return sorted(k for k in keys if k.startswith(prefix))

    mid_name = "r raw raw/ raw/json raw/json_tel raw/json_telemetry/ raw/json_telemetry/year=2025/b"
    for prefix in ["", *mid_name.split(), "raw/json.gz", "rawx", "zzz", "raw/o"]:
        assert keys_of(store, BUCKET, prefix) == under(prefix), prefix


def test_list_order_is_s3_key_order(store: ObjectStore) -> None:
    keys = ["a-b", "a/b", "a.b", "a0", "a/c/d", "a/c-d", "a/b0", "a/b-", "ab", "a~", "é", "A"]
    keys += ["a/c.d/e", "a/c0", "a é"]
    for key in reversed(keys):
        store.put(BUCKET, key, b"")
    assert keys_of(store) == sorted(keys)
    assert keys_of(store, BUCKET, "a/c") == sorted(k for k in keys if k.startswith("a/c"))


def test_list_returns_object_info(store: ObjectStore) -> None:
    put = store.put(BUCKET, "p/one", b"12345")
    [listed] = store.list(BUCKET, "p/")
    assert (listed.bucket, listed.key, listed.size, listed.etag) == (BUCKET, "p/one", 5, put.etag)
    assert listed.last_modified.utcoffset() == timedelta(0)


def test_list_paginates_in_order(store: ObjectStore) -> None:
    keys = [f"page/{i:02d}" for i in range(7)]
    for key in reversed(keys):
        store.put(BUCKET, key, b"x")
    assert keys_of(store, BUCKET, "page/", page_size=2) == keys
    assert keys_of(store, BUCKET, "page/", page_size=2, start_after="page/04") == keys[5:]


def test_list_start_after(store: ObjectStore) -> None:
    keys = ["a/1", "a/2", "a/sub/3", "a0", "b/1", "b/2"]
    for key in keys:
        store.put(BUCKET, key, b"x")
    for after in ["", "a", "a/", "a/1", "a/15", "a/sub", "a/sub/3", "a0", "a00", "b/1", "b/2", "c"]:
        assert keys_of(store, start_after=after) == [k for k in keys if k > after], after
    assert keys_of(store, BUCKET, "a/", start_after="a/1") == ["a/2", "a/sub/3"]
    assert keys_of(store, BUCKET, "b/", start_after="a/2") == ["b/1", "b/2"]


def test_list_missing_bucket_or_prefix_lists_nothing(store: ObjectStore) -> None:
    assert keys_of(store, "no-such-bucket") == []
    store.put(BUCKET, "x/y", b"")
    assert keys_of(store, BUCKET, "nothing/here/") == []


_counter = itertools.count()
_segment = st.text(alphabet="ab-._~ é0", min_size=1, max_size=4).filter(
    lambda s: s not in (".", "..")
)
_key = st.lists(_segment, min_size=1, max_size=3).map("/".join)


# Each example costs about 15 requests: the moto server (~100 requests/s) gets fewer of them.
_EXAMPLES = {"local": 40, "s3": 15}


def test_property_listing_is_sorted_and_complete(
    store: ObjectStore, request: pytest.FixtureRequest
) -> None:
    @settings(max_examples=_EXAMPLES[store_kind(request)], deadline=None)
    @given(keys=st.lists(_key, min_size=1, max_size=12, unique=True))
    def check(keys: list[str]) -> None:
        # A name is a file or a directory on a filesystem, so no key is another's "directory".
        keys = [k for k in keys if not any(o.startswith(k + "/") for o in keys)]
        run = f"prop/{next(_counter)}/"
        for key in keys:
            store.put(BUCKET, run + key, key.encode())
        assert keys_of(store, BUCKET, run) == sorted(run + k for k in keys)
        assert keys_of(store, BUCKET, run, page_size=2) == sorted(run + k for k in keys)

    check()


# -- delete --------------------------------------------------------------------------------


def test_delete_batch(store: ObjectStore) -> None:
    for key in ["d/1", "d/2", "d/3", "keep"]:
        store.put(BUCKET, key, b"x")
    result = store.delete_batch(BUCKET, ["d/1", "d/2", "d/3", "never-existed"])
    assert result.ok
    assert sorted(result.deleted) == ["d/1", "d/2", "d/3", "never-existed"]
    assert keys_of(store) == ["keep"]
    assert keys_of(store, BUCKET, "d") == []
    assert not store.exists(BUCKET, "d/1")
    store.put(BUCKET, "d/1", b"again")
    assert read(store, "d/1") == b"again"


def test_delete_batch_too_large(store: ObjectStore) -> None:
    store.put(BUCKET, "k0", b"x")
    keys = [f"k{i}" for i in range(MAX_DELETE_BATCH + 1)]
    with pytest.raises(BatchTooLarge):
        store.delete_batch(BUCKET, keys)
    assert store.exists(BUCKET, "k0")
    assert store.delete_batch(BUCKET, keys[:MAX_DELETE_BATCH]).ok
    assert not store.exists(BUCKET, "k0")


def test_delete_batch_reports_invalid_keys(store: ObjectStore) -> None:
    store.put(BUCKET, "good/1", b"x")
    store.put(BUCKET, "good/2", b"x")
    result = store.delete_batch(BUCKET, ["good/1", "../escape", "a//b", "good/2"])
    assert not result.ok
    assert sorted(result.deleted) == ["good/1", "good/2"]
    assert set(result.errors) == {"../escape", "a//b"}
    assert all(reason for reason in result.errors.values())
    assert keys_of(store) == []


def test_read_tail(store: ObjectStore) -> None:
    store.put(BUCKET, "t/k", b"0123456789")
    store.put(BUCKET, "t/empty", b"")
    assert store.read_tail(BUCKET, "t/k", 4) == b"6789"
    assert store.read_tail(BUCKET, "t/k", 100) == b"0123456789"
    assert store.read_tail(BUCKET, "t/empty", 4) == b""
    with pytest.raises(ObjectNotFound):
        store.read_tail(BUCKET, "t/missing", 4)
    with pytest.raises(InvalidKey):
        store.read_tail(BUCKET, "../x", 4)


# -- versions --------------------------------------------------------------------------------


def test_a_bucket_without_versions_lists_each_object_once(store: ObjectStore) -> None:
    # S3 names the version of an object written without versioning "null", the local store
    # None: either deletes the object for good.
    for key in ["v/a", "v/b", "w/c"]:
        store.put(BUCKET, key, key.encode())
    assert not store.versioned(BUCKET) and not store.versioned("no-such-bucket")
    listed = list(store.list_versions(BUCKET, "v/", page_size=1))
    assert [(v.key, v.delete_marker, v.is_latest, v.size) for v in listed] == [
        ("v/a", False, True, 3),
        ("v/b", False, True, 3),
    ]
    assert listed[0].etag == store.head(BUCKET, "v/a").etag
    assert list(store.list_versions("no-such-bucket")) == []
    result = store.delete_versions(BUCKET, [v.ref for v in listed] + [VersionRef("v/gone")])
    assert result.ok and set(result.deleted) == {v.ref for v in listed} | {VersionRef("v/gone")}
    assert keys_of(store) == ["w/c"]


def test_delete_versions_limits_and_bad_keys(store: ObjectStore) -> None:
    store.put(BUCKET, "good", b"x")
    with pytest.raises(BatchTooLarge):
        store.delete_versions(BUCKET, [VersionRef(f"k{i}") for i in range(MAX_DELETE_BATCH + 1)])
    result = store.delete_versions(BUCKET, [VersionRef("good"), VersionRef("../escape")])
    assert result.deleted == (VersionRef("good"),)
    assert set(result.errors) == {VersionRef("../escape")}
    assert keys_of(store) == []


# -- copy, arrow ---------------------------------------------------------------------------


def test_copy(store: ObjectStore) -> None:
    src = store.put(BUCKET, "src/a", b"payload")
    copied = store.copy(BUCKET, "src/a", OTHER, "dst/b")
    assert (copied.bucket, copied.key, copied.size, copied.etag) == (OTHER, "dst/b", 7, src.etag)
    assert read(store, "dst/b", OTHER) == b"payload"
    assert read(store, "src/a") == b"payload"

    store.put(BUCKET, "src/c", b"newer")
    assert store.copy(BUCKET, "src/c", OTHER, "dst/b").etag != src.etag
    assert read(store, "dst/b", OTHER) == b"newer"
    assert store.copy(BUCKET, "src/a", BUCKET, "src/a").etag == src.etag
    assert read(store, "src/a") == b"payload"


def test_arrow_filesystem_reads_objects(store: ObjectStore, tmp_path: Path) -> None:
    store.put(BUCKET, "raw/plain.txt", b"hello arrow")
    table = pa.table({"n": [1, 2, 3], "s": ["a", "b", "c"]})
    pq.write_table(table, tmp_path / "t.parquet")
    key = "telemetry_flat/type=lock/day=2025-01-01/hour=00/f.parquet"
    store.put_file(BUCKET, key, tmp_path / "t.parquet")

    fs, root = store.arrow_filesystem()
    with fs.open_input_stream(f"{root}{BUCKET}/raw/plain.txt") as f:
        assert f.read() == b"hello arrow"
    path = f"{root}{BUCKET}/{key}"
    assert pq.read_table(path, filesystem=fs).equals(table)


# -- local only: what the filesystem holds -------------------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "buckets")


def _all_files(root: Path) -> Iterator[Path]:
    return (p for p in root.rglob("*") if p.is_file())


def test_local_failed_put_keeps_old_object_and_no_temp_file(
    local: LocalObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    local.put(BUCKET, "p/k", b"old")

    def crash(src: object, dst: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk on fire"):
        local.put(BUCKET, "p/k", b"new")
    monkeypatch.undo()
    assert read(local, "p/k") == b"old"
    assert [p.name for p in _all_files(local.root)] == ["k"]


def test_local_temp_files_are_never_listed_or_addressable(local: LocalObjectStore) -> None:
    local.put(BUCKET, "d/k", b"x")
    (local.root / BUCKET / "d" / f"{TMP_PREFIX}abc").write_bytes(b"partial")
    assert keys_of(local) == ["d/k"]
    with pytest.raises(InvalidKey):
        local.put(BUCKET, f"d/{TMP_PREFIX}abc", b"x")


def test_local_symlink_escape_refused(local: LocalObjectStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    local.put(BUCKET, "inside/ok", b"x")
    (local.root / BUCKET / "link").symlink_to(outside)
    (local.root / BUCKET / "inside" / "file-link").symlink_to(outside / "secret")
    for key in ["link/secret", "link/new", "inside/file-link"]:
        with pytest.raises(InvalidKey, match="outside its bucket"):
            local.open(BUCKET, key)
        with pytest.raises(InvalidKey):
            local.put(BUCKET, key, b"x")
    assert keys_of(local) == ["inside/ok"]
    assert (outside / "secret").read_bytes() == b"secret"
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]


def test_local_etag_of_files_written_by_others(
    local: LocalObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = local.root / BUCKET / "ext" / "file"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"first")
    assert local.head(BUCKET, "ext/file").etag == hashlib.md5(b"first").hexdigest()
    path.write_bytes(b"second version")
    assert local.head(BUCKET, "ext/file").etag == hashlib.md5(b"second version").hexdigest()

    put = local.put(BUCKET, "ext/ours", b"ours")
    with monkeypatch.context() as m:
        # Another process reads the ETag this store recorded, without reading the bytes.
        m.setattr(local_store, "_file_chunks", lambda path: pytest.fail(f"hashed {path}"))
        assert LocalObjectStore(local.root).head(BUCKET, "ext/ours").etag == put.etag
        assert [i.etag for i in LocalObjectStore(local.root).list(BUCKET, "ext/o")] == [put.etag]
    (local.root / BUCKET / "ext" / "ours").write_bytes(b"edited in place")
    fresh = LocalObjectStore(local.root).head(BUCKET, "ext/ours")
    assert fresh.etag == hashlib.md5(b"edited in place").hexdigest()


def test_local_delete_removes_empty_directories(local: LocalObjectStore) -> None:
    local.put(BUCKET, "t/day=1/hour=00/a", b"x")
    local.put(BUCKET, "t/day=1/hour=01/b", b"x")
    local.delete_batch(BUCKET, ["t/day=1/hour=00/a"])
    assert sorted(p.name for p in (local.root / BUCKET / "t" / "day=1").iterdir()) == ["hour=01"]
    local.delete_batch(BUCKET, ["t/day=1/hour=01/b"])
    assert list((local.root / BUCKET).iterdir()) == []


def test_local_concurrent_puts_and_deletes_in_one_directory(local: LocalObjectStore) -> None:
    # delete_batch removes emptied directories while other threads write into them.
    def churn(worker: int) -> None:
        for i in range(30):
            key = f"t/day=1/hour=00/w{worker}-{i}"
            local.put(BUCKET, key, b"x")
            assert local.delete_batch(BUCKET, [key]).ok

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(churn, range(6)))
    assert keys_of(local) == []
    assert list((local.root / BUCKET).iterdir()) == []


def test_local_object_and_prefix_conflict(local: LocalObjectStore) -> None:
    local.put(BUCKET, "a/b", b"x")
    with pytest.raises(InvalidKey, match="both an object and a prefix"):
        local.put(BUCKET, "a/b/c", b"x")
    with pytest.raises(InvalidKey, match="both an object and a prefix"):
        local.put(BUCKET, "a", b"x")
    assert keys_of(local) == ["a/b"]
    assert [p.name for p in _all_files(local.root)] == ["b"]


def test_local_arrow_root(local: LocalObjectStore) -> None:
    fs, root = local.arrow_filesystem()
    assert root == f"{local.root.resolve()}/"
    local.put(BUCKET, "k", b"x")
    assert fs.get_file_info(f"{root}{BUCKET}/k").size == 1


def test_local_store_keeps_no_versions(local: LocalObjectStore) -> None:
    local.put(BUCKET, "k", b"x")
    with pytest.raises(ObjectNotFound):
        local.read_tail(BUCKET, "k", 1, version_id="v1")
    result = local.delete_versions(BUCKET, [VersionRef("k", "v1")])
    assert result.errors[VersionRef("k", "v1")].startswith("NoSuchVersion")
    assert local.exists(BUCKET, "k")


# -- S3 only: what the bucket holds, and what moto cannot produce --------------------------


def _remove_bucket(client: Any, bucket: str) -> None:
    """Delete a bucket and everything in it, if it exists (the raw client: no code under test)."""
    from botocore.exceptions import ClientError

    try:
        client.delete_bucket_policy(Bucket=bucket)
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "NoSuchBucket":
            return
        raise
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        objects = [{"Key": entry["Key"]} for entry in page.get("Contents", [])]
        if objects:
            client.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
    client.delete_bucket(Bucket=bucket)


@pytest.fixture
def s3_client(aws_clients: Any) -> Any:
    """The boto3 client the store uses, to see and arrange the buckets behind its back."""
    return aws_clients.client("s3")


@pytest.fixture
def s3(aws_clients: Any, s3_client: Any, moto_endpoint: str) -> Iterator[S3ObjectStore]:
    """An S3 store on the session's moto server, with `BUCKET` and `OTHER` fresh and empty."""
    from tests.moto_server import REGION

    for bucket in (BUCKET, OTHER):
        _remove_bucket(s3_client, bucket)  # left over by an interrupted run
        s3_client.create_bucket(Bucket=bucket)
    yield S3ObjectStore(
        s3_client, region=REGION, endpoint_url=moto_endpoint, credentials=aws_clients.credentials
    )
    for bucket in (BUCKET, OTHER):
        _remove_bucket(s3_client, bucket)


def _raw_keys(client: Any, bucket: str = BUCKET) -> list[str]:
    """What the bucket really holds, seen without the store's key checks."""
    answer = client.list_objects_v2(Bucket=bucket)
    return [entry["Key"] for entry in answer.get("Contents", [])]


@pytest.mark.aws
def test_s3_hostile_keys_never_reach_the_bucket(s3: S3ObjectStore, s3_client: Any) -> None:
    # S3 itself would store `../x`; the contract test cannot see it, since list hides such keys.
    s3.put(BUCKET, "src", b"x")
    for key in HOSTILE_KEYS:
        with pytest.raises(InvalidKey):
            s3.put(BUCKET, key, b"x")
        with pytest.raises(InvalidKey):
            s3.copy(BUCKET, "src", BUCKET, key)
    assert _raw_keys(s3_client) == ["src"]


@pytest.mark.aws
def test_s3_keys_written_by_other_tools_are_not_listed(s3: S3ObjectStore, s3_client: Any) -> None:
    s3_client.put_object(Bucket=BUCKET, Key="a//b", Body=b"x")
    s3_client.put_object(Bucket=BUCKET, Key="../up", Body=b"x")
    s3.put(BUCKET, "a/ok", b"x")
    assert keys_of(s3) == ["a/ok"]
    with pytest.raises(InvalidKey):
        s3.open(BUCKET, "a//b")


@pytest.mark.aws
def test_s3_object_and_prefix_coexist(s3: S3ObjectStore) -> None:
    for key in ["a", "a/b", "a/b/c"]:
        s3.put(BUCKET, key, key.encode())
    assert keys_of(s3) == ["a", "a/b", "a/b/c"]
    assert read(s3, "a/b") == b"a/b"


@pytest.mark.aws
def test_s3_list_fetches_pages_lazily(s3: S3ObjectStore) -> None:
    keys = [f"many/{i:03d}" for i in range(25)]
    for key in keys:
        s3.put(BUCKET, key, b"")
    listing = s3.list(BUCKET, "many/", page_size=4)
    assert next(listing).key == "many/000"
    # Only the first page has been fetched: a key deleted now is missing from later pages.
    s3.delete_batch(BUCKET, ["many/020"])
    assert [info.key for info in listing] == [k for k in keys[1:] if k != "many/020"]


@pytest.mark.aws
def test_s3_put_file_multipart(s3: S3ObjectStore, s3_client: Any, tmp_path: Path) -> None:
    part = 5 * 1024 * 1024  # S3's smallest part
    multipart = S3ObjectStore(s3_client, region=s3.region, multipart_threshold=part, part_size=part)
    data = os.urandom(2 * part + 3)
    src = tmp_path / "big.bin"
    src.write_bytes(data)

    info = multipart.put_file(BUCKET, "big/multi.bin", src)

    assert info.size == len(data)
    assert info.etag.endswith("-3")  # an opaque multipart ETag, not the md5 of the bytes
    assert multipart.head(BUCKET, "big/multi.bin").etag == info.etag
    assert read(multipart, "big/multi.bin") == data
    assert not s3_client.list_multipart_uploads(Bucket=BUCKET).get("Uploads")


@pytest.mark.aws
def test_s3_failed_multipart_upload_is_aborted(
    s3: S3ObjectStore, s3_client: Any, tmp_path: Path
) -> None:
    # Parts under 5 MiB: S3 (and moto) refuse to complete the upload.
    small_parts = S3ObjectStore(
        s3_client, region=s3.region, multipart_threshold=1024, part_size=1024
    )
    src = tmp_path / "small-parts.bin"
    src.write_bytes(os.urandom(3000))
    with pytest.raises(TerminalError) as exc:
        small_parts.put_file(BUCKET, "never", src)
    assert exc.value.context["code"] == "EntityTooSmall"
    assert not s3.exists(BUCKET, "never")
    assert not s3_client.list_multipart_uploads(Bucket=BUCKET).get("Uploads")


@pytest.mark.aws
def test_s3_missing_bucket(s3: S3ObjectStore) -> None:
    missing = "no-such-bucket"
    with pytest.raises(ObjectNotFound) as not_found:
        s3.open(missing, "k")
    assert not_found.value.context == {"bucket": missing, "key": "k"}
    assert not_found.value.hint and missing in not_found.value.hint
    with pytest.raises(ConfigError, match=missing) as config:
        s3.put(missing, "k", b"x")
    assert config.value.hint and "sluice.toml" in config.value.hint
    assert not s3.exists(missing, "k")
    assert keys_of(s3, missing) == []
    assert s3.delete_batch(missing, ["a", "b"]).deleted == ("a", "b")


@pytest.mark.aws
def test_s3_open_is_a_stream_that_releases_its_connection(s3: S3ObjectStore) -> None:
    data = os.urandom(3 * 1024 * 1024)
    s3.put(BUCKET, "stream", data)
    with s3.open(BUCKET, "stream") as f:
        assert f.read(10) == data[:10]
        assert f.readable() and not f.seekable()
    assert f.closed
    with pytest.raises(ValueError):
        f.read(1)
    # Streams closed half-read (and kept referenced, so the garbage collector cannot close
    # them for us) hold no socket.
    open_fds = len(os.listdir("/dev/fd"))
    streams = []
    for _ in range(20):
        with s3.open(BUCKET, "stream") as f:
            assert f.read(1) == data[:1]
        streams.append(f)
    assert len(os.listdir("/dev/fd")) < open_fds + 5
    assert read(s3, "stream") == data


@pytest.mark.aws
def test_s3_delete_reports_per_key_errors_of_a_200_answer(
    s3: S3ObjectStore, s3_client: Any
) -> None:
    # A bucket policy that denies DeleteObject under `locked/`: moto, like S3, answers 200 and
    # lists the denied keys under Errors.
    for key in ["locked/a", "free/b"]:
        s3.put(BUCKET, key, b"x")
    deny_deletes(s3_client, BUCKET, "locked/*")

    result = s3.delete_batch(BUCKET, ["locked/a", "free/b", "../bad"])

    assert not result.ok
    assert result.deleted == ("free/b",)
    assert set(result.errors) == {"locked/a", "../bad"}
    assert result.errors["locked/a"].startswith("AccessDenied")
    assert keys_of(s3) == ["locked/a"]


def refs(*keys: str) -> list[VersionRef]:
    return [VersionRef(key) for key in keys]


def test_parse_delete_answer() -> None:
    # The shape botocore parses a DeleteObjects answer into (Quiet=False).
    answer = {
        "ResponseMetadata": {"HTTPStatusCode": 200},
        "Deleted": [
            {"Key": "a"},
            {"Key": "c", "DeleteMarker": True},
            {"Key": "e", "VersionId": "1"},
        ],
        "Errors": [
            {"Key": "b", "Code": "SlowDown", "Message": "Please reduce your request rate."},
            {"Key": "e", "VersionId": "2", "Code": "AccessDenied", "Message": "no"},
            {"Key": "f", "Code": "AccessDenied", "Message": "no"},  # moto names no version
        ],
    }
    e1, e2, f1 = VersionRef("e", "1"), VersionRef("e", "2"), VersionRef("f", "1")
    deleted, failed = parse_delete_answer(answer, [*refs("a", "b", "c", "d"), e1, e2, f1])
    assert deleted == [*refs("a", "c"), e1]
    assert failed[VersionRef("b")] == ("SlowDown", "SlowDown: Please reduce your request rate.")
    assert failed[VersionRef("d")][0] == "Missing"  # named nowhere: not known to be deleted
    assert failed[e2][0] == failed[f1][0] == "AccessDenied"


class FakeDeleteObjects:
    """Answers DeleteObjects from a script: key -> error codes for its successive attempts.

    moto never throttles, so the retry loop is driven by real-shaped answers instead.
    """

    def __init__(self, script: dict[str, list[str]], fail_request: int | None = None) -> None:
        self.script = script
        self.fail_request = fail_request
        self.requests: list[list[str]] = []

    def __call__(self, versions: list[VersionRef]) -> dict[str, Any]:
        self.requests.append([v.key for v in versions])
        if len(self.requests) == self.fail_request:
            raise BackendBusy("DeleteObjects s3://bucket/ failed: SlowDown", code="SlowDown")
        answer: dict[str, Any] = {"Deleted": [], "Errors": []}
        for v in versions:
            codes = self.script.get(v.key, [])
            if codes:
                code = codes.pop(0)
                answer["Errors"].append({"Key": v.key, "Code": code, "Message": f"{code} says no"})
            else:
                answer["Deleted"].append({"Key": v.key})
        return answer


def test_delete_retries_slowdown_with_backoff() -> None:
    send = FakeDeleteObjects({"b": ["SlowDown", "InternalError"], "c": ["AccessDenied"]})
    sleeps: list[float] = []

    deleted, errors = delete_with_retries(
        send, refs("a", "b", "c"), base_delay=0.1, sleep=sleeps.append
    )

    assert sorted(deleted, key=str) == refs("a", "b")
    assert errors == {VersionRef("c"): "AccessDenied: AccessDenied says no"}  # not retried
    assert send.requests == [["a", "b", "c"], ["b"], ["b"]]  # only the throttled key again
    assert len(sleeps) == 2
    assert 0.05 <= sleeps[0] <= 0.1 and 0.1 <= sleeps[1] <= 0.2  # exponential, with jitter


def test_delete_gives_up_after_the_last_attempt() -> None:
    send = FakeDeleteObjects({"hot": ["SlowDown"] * 10})
    deleted, errors = delete_with_retries(
        send, refs("hot", "cold"), attempts=3, sleep=lambda s: None
    )
    assert deleted == refs("cold")
    assert errors == {VersionRef("hot"): "SlowDown: SlowDown says no"}
    assert len(send.requests) == 3


def _client_error(code: str, status: int, op: str = "GetObject") -> Exception:
    from botocore.exceptions import ClientError

    body = {
        "Error": {"Code": code, "Message": f"{code} message"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    error: Exception = ClientError(body, op)
    return error


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("NoSuchKey", 404, ObjectNotFound),
        ("404", 404, ObjectNotFound),
        ("SlowDown", 503, BackendBusy),
        ("ThrottlingException", 400, BackendBusy),
        ("ServiceUnavailable", 503, TransientError),
        ("InternalError", 500, TransientError),
        ("AccessDenied", 403, TerminalError),
        ("InvalidRange", 416, TerminalError),
    ],
)
def test_translate_client_errors(code: str, status: int, expected: type[SluiceError]) -> None:
    error = translate_error(_client_error(code, status), "GetObject", BUCKET, "k")
    assert type(error) is expected
    assert f"s3://{BUCKET}/k" in error.message


def test_translate_access_denied_names_the_action_and_the_profile() -> None:
    error = translate_error(_client_error("AccessDenied", 403), "ListObjectsV2", BUCKET)
    assert isinstance(error, TerminalError)
    assert error.hint and "s3:ListBucket" in error.hint and "profile or role" in error.hint


def test_translate_connection_and_credential_errors() -> None:
    from botocore.exceptions import EndpointConnectionError, NoCredentialsError

    unreachable = EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    assert type(translate_error(unreachable, "GetObject", BUCKET, "k")) is TransientError
    no_credentials = translate_error(NoCredentialsError(), "PutObject", BUCKET, "k")
    assert isinstance(no_credentials, ConfigError) and no_credentials.hint


@pytest.mark.aws
def test_s3_arrow_filesystem_reads_parquet_written_by_put(s3: S3ObjectStore) -> None:
    # How the DuckDB engine reads S3: a pyarrow dataset over the store's arrow filesystem.
    import duckdb
    import pyarrow.dataset as ds

    table = pa.table({"n": [1, 2, 3], "s": ["a", "b", "c"]})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    for hour in ["00", "01"]:
        key = f"telemetry_flat/type=lock/day=2025-01-01/hour={hour}/f.parquet"
        s3.put(BUCKET, key, sink.getvalue().to_pybytes())

    fs, root = s3.arrow_filesystem()
    assert root == ""
    path = f"{BUCKET}/telemetry_flat/type=lock/day=2025-01-01/hour=00/f.parquet"
    assert pq.read_table(path, filesystem=fs).equals(table)
    con = duckdb.connect()
    con.register("lock", ds.dataset(f"{BUCKET}/telemetry_flat/", filesystem=fs, format="parquet"))
    assert con.sql("SELECT sum(n), count(*) FROM lock").fetchall() == [(12, 6)]


def test_delete_keeps_progress_when_a_retry_fails_as_a_whole() -> None:
    send = FakeDeleteObjects({"b": ["SlowDown"]}, fail_request=2)
    deleted, errors = delete_with_retries(send, refs("a", "b"), sleep=lambda s: None)
    assert deleted == refs("a")
    assert errors == {VersionRef("b"): "BackendBusy: DeleteObjects s3://bucket/ failed: SlowDown"}

    with pytest.raises(BackendBusy):  # nothing deleted yet: the caller retries the batch
        delete_with_retries(FakeDeleteObjects({}, fail_request=1), refs("a"), sleep=lambda s: None)


# -- S3 only: versioned buckets ------------------------------------------------------------


def _history(client: Any, bucket: str = BUCKET) -> list[tuple[str, str, bool]]:
    """Every version and delete marker the bucket holds, seen without the store."""
    answer = client.list_object_versions(Bucket=bucket)
    versions = [(v["Key"], v["VersionId"], False) for v in answer.get("Versions", [])]
    markers = [(m["Key"], m["VersionId"], True) for m in answer.get("DeleteMarkers", [])]
    return sorted(versions + markers)


@pytest.fixture
def versioned(s3: S3ObjectStore, s3_client: Any) -> S3ObjectStore:
    """`BUCKET` with versioning enabled; `_remove_bucket` cannot empty it, so this does."""
    s3_client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    yield s3
    s3_client.delete_bucket_policy(Bucket=BUCKET)
    history = [VersionRef(key, version) for key, version, _ in _history(s3_client)]
    for start in range(0, len(history), MAX_DELETE_BATCH):
        s3.delete_versions(BUCKET, history[start : start + MAX_DELETE_BATCH])


@pytest.mark.aws
def test_s3_versioned_bucket_lists_and_deletes_its_history(
    versioned: S3ObjectStore, s3_client: Any
) -> None:
    s3 = versioned
    first = s3.put(BUCKET, "h/a", b"one")
    s3.put(BUCKET, "h/a", b"two")
    s3.put(BUCKET, "h/a", b"three")
    s3.put(BUCKET, "h/b", b"bee")
    s3.delete_batch(BUCKET, ["h/a"])  # a delete marker: the three versions stay
    assert s3.versioned(BUCKET)
    assert keys_of(s3) == ["h/b"]

    listed = list(s3.list_versions(BUCKET, "h/", page_size=2))
    assert [(v.key, v.delete_marker) for v in listed if v.key == "h/a"].count(("h/a", False)) == 3
    assert sorted((v.key, v.version_id, v.delete_marker) for v in listed) == _history(s3_client)
    [marker] = [v for v in listed if v.delete_marker]
    assert (marker.key, marker.is_latest, marker.size) == ("h/a", True, 0)
    [oldest] = [v for v in listed if v.etag == first.etag]
    assert s3.read_tail(BUCKET, "h/a", 2, version_id=oldest.version_id) == b"ne"

    result = s3.delete_versions(BUCKET, [v.ref for v in listed])
    assert result.ok and set(result.deleted) == {v.ref for v in listed}
    assert _history(s3_client) == []


@pytest.mark.aws
def test_s3_suspended_versioning_still_keeps_history(
    versioned: S3ObjectStore, s3_client: Any
) -> None:
    versioned.put(BUCKET, "k", b"x")
    s3_client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Suspended"})
    assert versioned.versioned(BUCKET)


@pytest.mark.aws
def test_s3_delete_versions_reports_per_version_errors(
    versioned: S3ObjectStore, s3_client: Any
) -> None:
    s3 = versioned
    for key in ["locked/a", "locked/a", "free/b"]:
        s3.put(BUCKET, key, b"x")
    deny_deletes(s3_client, BUCKET, "locked/*")
    listed = [v.ref for v in s3.list_versions(BUCKET)]
    result = s3.delete_versions(BUCKET, listed)
    assert [ref.key for ref in result.deleted] == ["free/b"]
    assert set(result.errors) == {r for r in listed if r.key == "locked/a"}
    assert all(why.startswith("AccessDenied") for why in result.errors.values())
    assert [key for key, _, _ in _history(s3_client)] == ["locked/a", "locked/a"]
