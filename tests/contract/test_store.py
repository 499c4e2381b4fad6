"""The object store contract: every `ObjectStore` implementation passes these tests.

Tests speak only the interface, except the local-only section at the end. A backend that needs
its buckets created first (S3) creates `BUCKET` and `OTHER` in its fixture.
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

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.backends.store import local as local_store
from sluice.backends.store.base import MAX_DELETE_BATCH, ObjectStore
from sluice.backends.store.local import TMP_PREFIX, LocalObjectStore
from sluice.errors import BatchTooLarge, InvalidKey, ObjectNotFound

BUCKET = "bucket"
OTHER = "other-bucket"


@pytest.fixture(params=["local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalObjectStore(tmp_path / "buckets")
    raise AssertionError(f"unknown store {request.param}")


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


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(keys=st.lists(_key, min_size=1, max_size=12, unique=True))
def test_property_listing_is_sorted_and_complete(store: ObjectStore, keys: list[str]) -> None:
    # A name is a file or a directory on a filesystem, so no key is another's "directory".
    keys = [k for k in keys if not any(o.startswith(k + "/") for o in keys)]
    run = f"prop/{next(_counter)}/"
    for key in keys:
        store.put(BUCKET, run + key, key.encode())
    assert keys_of(store, BUCKET, run) == sorted(run + k for k in keys)
    assert keys_of(store, BUCKET, run, page_size=2) == sorted(run + k for k in keys)


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
