"""The store holds what Jobs running recipe code wrote: nothing read from it is trusted.

No symlink escapes from a file store; JSON documents and manifests bounded in size and nesting
(StoreError, never RecursionError or memory growth); downloads stop at the size a manifest claims;
resumable row parts and training checkpoints are verified (sha256) before they are resumed, with a
fall back to what is intact. S3 against the local SeaweedFS server (127.0.0.1).
"""

from __future__ import annotations

import io
import json
import os
import tracemalloc
import uuid
from pathlib import Path

import pyarrow as pa
import pytest

from fathom_jobs.store import (
    AccessDeniedError,
    FileEntry,
    IntegrityError,
    Manifest,
    StoreError,
    open_store,
    save_checkpoint,
)
from fathom_jobs.store.local import FileStore
from fathom_jobs.store.manifest import hash_file
from tests.support.s3server import SeaweedServer

MB = 1024 * 1024
BUCKET = "fathom-hardening-tests"


@pytest.fixture
def world(tmp_path: Path) -> tuple[FileStore, Path]:
    """A store with an escape hatch: links to a file and a directory outside its root."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("the node's credentials")
    root = tmp_path / "store"
    root.mkdir()
    (root / "link").symlink_to(outside / "secret.txt")
    (root / "dirlink").symlink_to(outside, target_is_directory=True)
    (root / "ok.txt").write_text("fine")
    (root / "inner").symlink_to(root / "ok.txt")  # a link that stays inside is fine
    store = open_store(f"file://{root}")
    assert isinstance(store, FileStore)
    return store, outside


def test_no_symlink_leads_out_of_the_file_store(world, tmp_path):
    store, outside = world
    for rel in ("link", "dirlink/secret.txt"):
        with pytest.raises(AccessDeniedError, match="outside the store"):
            store.read_bytes(rel)
        with pytest.raises(AccessDeniedError):
            store.download_file(rel, tmp_path / "copy")
        assert not store.exists(rel)
    assert store.read_bytes("inner") == b"fine"
    assert store.list() == ["inner", "ok.txt"] and store.list("dirlink") == []
    with pytest.raises(AccessDeniedError):
        store.write_bytes("dirlink/planted.txt", b"x")
    with pytest.raises(AccessDeniedError):
        store.delete_prefix("dirlink")
    with pytest.raises(AccessDeniedError):
        store.child("dirlink").read_bytes("secret.txt")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    # A manifest naming the link downloads nothing from outside.
    store.write_bytes("out/_MANIFEST.json", Manifest(files={"x": hash_file(outside / "secret.txt")}).to_json().encode())
    (store.root / "out" / "x").symlink_to(outside / "secret.txt")
    with pytest.raises(AccessDeniedError):
        store.download_dir("out", tmp_path / "dl")
    assert not (tmp_path / "dl" / "x").exists()


def test_an_oversize_manifest_is_a_store_error_read_in_bounded_memory(tmp_path):
    store = open_store(f"file://{tmp_path}/s").limit(manifest_bytes=8 * MB, json_bytes=MB)
    big = b'{"files": {' + b" " * (99 * MB) + b"}, \"created\": \"x\"}"
    store.write_bytes("_MANIFEST.json", big)
    store.write_bytes("metrics.json", b'{"a": "' + b"x" * (2 * MB) + b'"}')
    del big
    tracemalloc.start()
    with pytest.raises(StoreError, match="limited to 8388608 bytes"):
        store.read_manifest()
    with pytest.raises(StoreError, match="limited to 1048576 bytes"):
        store.child("").read_json("metrics.json")  # children keep the bounds
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2 * MB, peak


@pytest.mark.parametrize("document", [
    b"[" * 200_000 + b"]" * 200_000,
    b'{"files": {}, "created": "x", "extra": ' + b'{"a": ' * 100 + b"1" + b"}" * 100 + b"}",
    b'{"files": {}, "created": "x", "extra": {"loss": NaN}}',
    b'{"files": {"a": {"size": 1, "sha256": "' + b"z" * 64 + b'"}}, "created": "x"}',
    b'{"files": {"a": {"size": 99999999999999999999, "sha256": "' + b"0" * 64 + b'"}}, "created": "x"}',
    b"\xff\xfe not json",
], ids=["deep", "deep-extra", "nan", "bad-digest", "absurd-size", "bytes"])
def test_a_malformed_manifest_is_a_store_error(tmp_path, document):
    store = open_store(f"file://{tmp_path}/s")
    store.write_bytes("_MANIFEST.json", document)
    with pytest.raises(StoreError):
        store.read_manifest()
    store.write_bytes("doc.json", document)
    try:
        store.read_json("doc.json")  # plain JSON documents: bounded the same way, never a RecursionError
    except StoreError:
        pass


def _claims(store, rel: str, size: int, payload: bytes) -> None:
    """`rel/data.bin` holds payload, and the committed manifest claims `size` bytes."""
    store.write_bytes(f"{rel}/data.bin", payload)
    manifest = Manifest(files={"data.bin": FileEntry(size, "0" * 64)})
    store.write_bytes(f"{rel}/_MANIFEST.json", manifest.to_json().encode())


def test_a_part_bigger_than_its_manifest_says_is_not_downloaded(tmp_path):
    store = open_store(f"file://{tmp_path}/s")
    _claims(store, "out", 5, os.urandom(20 * MB))
    moved = []
    with pytest.raises(IntegrityError, match="20971520 bytes, but _MANIFEST.json says 5: not downloaded"):
        store.download_dir("out", tmp_path / "dl", progress=lambda done, total: moved.append(done))
    assert max(moved, default=0) == 0 and not (tmp_path / "dl" / "data.bin").exists()


class LyingStore(FileStore):
    """A store whose size answers agree with any manifest (what a hostile server could do)."""

    def child(self, rel: str) -> LyingStore:
        return LyingStore(self.root / rel)

    def _size(self, key: str) -> int:
        return 5


def test_a_download_stops_at_the_claimed_size_once(tmp_path):
    store = LyingStore(tmp_path / "s")
    _claims(store, "out", 5, os.urandom(40 * MB))
    moved = []
    with pytest.raises(IntegrityError, match="ran past the 5 bytes"):
        store.download_dir("out", tmp_path / "dl", progress=lambda done, total: moved.append(done))
    assert max(moved) <= 8 * MB + 5  # one copy chunk at most, and no second attempt
    assert not (tmp_path / "dl" / "data.bin").exists()


# -- S3 --------------------------------------------------------------------------------------------

@pytest.fixture
def s3(s3_env: None, s3_server: SeaweedServer):
    s3_server.create_bucket(BUCKET)
    return open_store(f"s3://{BUCKET}/t-{uuid.uuid4().hex[:10]}", endpoint=s3_server.endpoint,
                      connect_timeout=5, read_timeout=10, max_attempts=2, outer_attempts=1)


def test_s3_reads_are_bounded_and_claimed_sizes_checked_before_downloading(s3, tmp_path):
    s3.write_bytes("big.json", b'{"a": "' + b"x" * (3 * MB) + b'"}')
    with pytest.raises(StoreError, match="limited to 1048576 bytes"):
        s3.read_json("big.json", max_bytes=MB)
    assert s3.limit(manifest_bytes=1024) is s3
    s3.write_bytes("_MANIFEST.json", b'{"files": {}, "created": "x", "extra": {"pad": "' + b"y" * 4096 + b'"}}')
    with pytest.raises(StoreError, match="limited to 1024 bytes"):
        s3.child("").read_manifest()
    _claims(s3, "out", 5, os.urandom(6 * MB))
    with pytest.raises(IntegrityError, match="not downloaded"):
        s3.download_dir("out", tmp_path / "dl")


class _Body(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[int] = []

    def read(self, size: int | None = -1) -> bytes:  # type: ignore[override]
        self.reads.append(-1 if size is None else size)
        return super().read(size)


def test_an_s3_body_longer_than_its_content_length_is_cut_at_the_bound():
    from fathom_jobs.store.s3 import S3Connection, S3Store

    class Client:
        def __init__(self, length: int | None, data: bytes) -> None:
            self.length, self.data, self.body = length, data, None

        def get_object(self, **_: object) -> dict:
            self.body = _Body(self.data)
            return {"Body": self.body, **({"ContentLength": self.length} if self.length is not None else {})}

    for length in (None, 10):  # a server that says nothing, or lies
        client = Client(length, b"x" * (5 * MB))
        store = S3Store("b", "", S3Connection(client, None, "test"))  # type: ignore[arg-type]
        with pytest.raises(StoreError, match="limited to 1024 bytes"):
            store.read_bytes("k", max_bytes=1024)
        assert client.body.reads == [1025]
    client = Client(5 * MB, b"x")
    with pytest.raises(StoreError, match="5242880 bytes"):
        S3Store("b", "", S3Connection(client, None, "test")).read_bytes("k", max_bytes=1024)  # type: ignore[arg-type]
    assert client.body.reads == []  # refused on the header alone


# -- resume: row parts and training checkpoints --------------------------------------------------

SCHEMA = pa.schema([("id", pa.string()), ("v", pa.int64())])


def test_a_corrupt_row_part_is_discarded_not_resumed(tmp_path):
    from fathom_jobs.parts import PartWriter

    store = open_store(f"file://{tmp_path}/out")
    writer = PartWriter(store, SCHEMA, "fp", tmp_path / "w1")
    assert writer.resume() == []
    for i in range(4):
        writer.append([{"id": f"r{i}", "v": i}])
    parts = sorted(k for k in store.list("checkpoint") if k.endswith(".parquet"))
    assert len(parts) == 4
    store.write_bytes(parts[1], b"PAR1 garbage that is not parquet at all")  # corrupt (ArrowInvalid before)
    data = store.read_bytes(parts[2])
    store.write_bytes(parts[2], data[:-1] + bytes([data[-1] ^ 1]))  # one bit flipped
    store.delete(parts[3] + ".json")  # uploaded, never committed
    again = PartWriter(store, SCHEMA, "fp", tmp_path / "w2")
    assert again.resume() == [{"id": "r0", "v": 0}]
    assert sorted(k for k in store.list("checkpoint") if k.endswith(".parquet")) == parts[:1]
    assert again.next_index == 4  # new parts never reuse a discarded number


def test_training_resume_skips_a_corrupt_checkpoint_for_the_previous_complete_one(tmp_path, monkeypatch):
    from fathom_jobs import checkpoints
    from fathom_jobs.specs import JobSpec

    monkeypatch.setenv("FATHOM_CACHE_DIR", str(tmp_path / "cache"))
    out = f"file://{tmp_path}/runs/ml/r/sft/"
    store = open_store(out)
    for step in (2, 4):
        local = tmp_path / f"ckpt-{step}"
        (local / "global_step").mkdir(parents=True)
        (local / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        (local / "global_step" / "optim.pt").write_bytes(os.urandom(1000))
        save_checkpoint(store, step, local, extra={"fingerprint": "fp"})
    data = store.read_bytes("checkpoints/step-4/global_step/optim.pt")
    store.write_bytes("checkpoints/step-4/global_step/optim.pt", bytes(b ^ 0xFF for b in data))  # same size, rotten
    job = JobSpec(recipe="r", namespace="ml", stage="sft", type="sft", attempt=1, params={}, output=out,
                  resume_from=store.uri_of("checkpoints/step-4"))
    point = checkpoints.resume_point(job, store, "fp")
    assert point == (2, store.uri_of("checkpoints/step-2"))
    assert checkpoints.resume_point(job, store, "fp") == point  # the node's other ranks read the same decision
    target = checkpoints.download_resume(point, job, tmp_path / "trainer")
    assert json.loads((target / "trainer_state.json").read_text()) == {"global_step": 2}
    # Nothing intact at all: start over, never crash.
    data = store.read_bytes("checkpoints/step-2/trainer_state.json")
    store.write_bytes("checkpoints/step-2/trainer_state.json", data.replace(b"2", b"3"))
    fresh = job.model_copy(update={"attempt": 2})
    assert checkpoints.resume_point(fresh, store, "fp") is None
