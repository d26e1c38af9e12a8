"""The artifact store against a real S3 server (SeaweedFS) and the local filesystem."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import traceback
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest

from fathom_jobs.memo import is_complete
from fathom_jobs.store import (
    AccessDeniedError,
    IntegrityError,
    Manifest,
    NotFoundError,
    ProgressWriter,
    Store,
    StoreError,
    download_checkpoint,
    fingerprint,
    latest_checkpoint,
    open_store,
    read_progress,
    save_checkpoint,
    write_metrics,
)
from tests.support.s3server import SeaweedServer  # the s3_server fixture comes from conftest.py

MB = 1024 * 1024
BUCKET = "fathom-store-tests"


class Interrupted(Exception):
    """Stands in for a job killed half-way through an upload."""


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bucket(s3_server: SeaweedServer) -> str:
    s3_server.create_bucket(BUCKET)
    return BUCKET


def small_parts():
    """Multipart from 5 MB (the S3 minimum part), so tests exercise it on small files."""
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=5 * MB, multipart_chunksize=5 * MB,
                          max_concurrency=4, preferred_transfer_client="classic")


def s3_store(server: SeaweedServer, bucket: str) -> Store:
    return open_store(f"s3://{bucket}/t-{uuid.uuid4().hex[:10]}", endpoint=server.endpoint,
                      config=small_parts())


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "file":
        return open_store(f"file://{tmp_path}/store")
    request.getfixturevalue("s3_env")
    return s3_store(request.getfixturevalue("s3_server"), request.getfixturevalue("bucket"))


def make_checkpoint(root: Path, big_mb: int = 12) -> dict[str, bytes]:
    """A model-like directory: two shards (one multipart-sized), configs, an empty file."""
    files = {
        "model-00001-of-00002.safetensors": os.urandom(big_mb * MB),
        "model-00002-of-00002.safetensors": os.urandom(3 * MB + 17),
        "config.json": json.dumps({"hidden_size": 64}).encode(),
        "tokenizer/tokenizer.json": b'{"vocab": {}}',
        "added_tokens.json": b"",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def overwrite_stored_object(store: Store, rel: str, data: bytes,
                            server: SeaweedServer | None) -> None:
    """Change an object behind the store's back, as bit rot or a bad writer would."""
    where = urlparse(store.uri_of(rel))
    if where.scheme == "file":
        Path(where.path).write_bytes(data)
    else:
        assert server is not None
        server.client().put_object(Bucket=where.netloc, Key=where.path.lstrip("/"), Body=data)


def server_for(store: Store, request: pytest.FixtureRequest) -> SeaweedServer | None:
    return request.getfixturevalue("s3_server") if store.uri.startswith("s3://") else None


# -- objects ----------------------------------------------------------------------------------


def test_objects_json_list_and_delete(store: Store) -> None:
    assert not store.exists("a/one.txt")
    store.write_bytes("a/one.txt", b"1")
    store.write_json("a/b/two.json", {"x": [1, 2]})
    store.write_bytes("a-sibling/three.txt", b"3")
    assert store.exists("a/one.txt")
    assert store.read_bytes("a/one.txt") == b"1"
    assert store.read_json("a/b/two.json") == {"x": [1, 2]}
    assert store.list() == ["a-sibling/three.txt", "a/b/two.json", "a/one.txt"]
    assert store.list("a") == ["a/b/two.json", "a/one.txt"]
    assert store.child("a").list() == ["b/two.json", "one.txt"]
    assert store.child("a").uri == store.uri + "/a"
    store.delete_prefix("a")  # whole segments: "a-sibling" must survive
    assert store.list() == ["a-sibling/three.txt"]
    with pytest.raises(NotFoundError, match="a/one.txt does not exist"):
        store.read_bytes("a/one.txt")
    with pytest.raises(ValueError, match="invalid store key"):
        store.read_bytes("../escape")


def test_file_store_writes_are_atomic(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}")
    store.write_bytes("x/data.bin", b"new")
    store.write_bytes("x/data.bin", b"newer")
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["data.bin"]  # no temp left
    assert (tmp_path / "x" / "data.bin").read_bytes() == b"newer"


@pytest.mark.parametrize("uri, expected", [
    ("gs://bucket/x", "unsupported store URI 'gs://bucket/x': expected s3://bucket/prefix or "
                      "file:///absolute/path"),
    ("/just/a/path", "unsupported store URI '/just/a/path'"),
    ("file://relative/path", "expected file:///absolute/path"),
    ("s3://", "expected s3://bucket/prefix"),
    ("s3://bucket/a/../b", "invalid store key"),
])
def test_open_store_rejects_bad_uris(uri: str, expected: str) -> None:
    with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(".", r"\.")):
        open_store(uri)


def test_open_store_keeps_credentials_out_of_uri_errors() -> None:
    with pytest.raises(ValueError) as caught:
        open_store("s3://AKIAXX:topsecretvalue@bucket/x")
    assert "topsecretvalue" not in str(caught.value)
    assert "credentials do not belong in the URI" in str(caught.value)


def test_open_store_reads_endpoint_from_env(s3_env: None, s3_server: SeaweedServer,
                                            bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FATHOM_S3_ENDPOINT", s3_server.endpoint)
    store = open_store(f"s3://{bucket}/env-{uuid.uuid4().hex[:8]}")
    store.write_bytes("hello.txt", b"hi")
    key = urlparse(store.uri_of("hello.txt")).path.lstrip("/")
    assert s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read() == b"hi"


# -- directories, manifests, integrity --------------------------------------------------------


def test_checkpoint_round_trip(store: Store, tmp_path: Path) -> None:
    files = make_checkpoint(tmp_path / "ckpt")
    seen: list[tuple[int, int]] = []
    uri = save_checkpoint(store, 10, tmp_path / "ckpt", extra={"loss": 0.5},
                          progress=lambda done, total: seen.append((done, total)))
    assert uri == store.uri + "/checkpoints/step-10"
    total = sum(len(data) for data in files.values())
    assert seen[-1] == (total, total)

    manifest = store.read_manifest("checkpoints/step-10")
    assert manifest is not None
    assert manifest.extra == {"step": 10, "loss": 0.5}
    assert {path: (entry.size, entry.sha256) for path, entry in manifest.files.items()} == {
        path: (len(data), hashlib.sha256(data).hexdigest()) for path, data in files.items()
    }
    assert latest_checkpoint(store) == (10, uri)
    assert download_checkpoint(store, tmp_path / "restored") == 10
    assert read_tree(tmp_path / "restored") == files


def test_corrupted_object_is_detected(store: Store, tmp_path: Path,
                                      request: pytest.FixtureRequest) -> None:
    files = make_checkpoint(tmp_path / "out", big_mb=6)
    store.upload_dir(tmp_path / "out", "stage")
    victim = "model-00002-of-00002.safetensors"
    # Same size, different bytes: only the checksum can tell.
    overwrite_stored_object(store, f"stage/{victim}", os.urandom(len(files[victim])),
                            server_for(store, request))
    with pytest.raises(IntegrityError) as caught:
        store.download_dir("stage", tmp_path / "down")
    assert store.uri_of(f"stage/{victim}") in str(caught.value)
    assert "sha256" in str(caught.value)
    assert not (tmp_path / "down" / victim).exists()  # no bad copy left for anyone to load


def test_corruption_in_transit_is_healed_by_one_retry(store: Store, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    files = make_checkpoint(tmp_path / "out", big_mb=6)
    store.upload_dir(tmp_path / "out", "stage")
    real_get = store._get_file
    flipped: list[str] = []

    def flaky_get(key, local, progress):
        real_get(key, local, progress)
        if key.endswith("00001-of-00002.safetensors") and not flipped:
            flipped.append(key)
            with open(local, "r+b") as handle:
                handle.seek(1000)
                handle.write(bytes([handle.read(1)[0] ^ 0xFF]))

    monkeypatch.setattr(store, "_get_file", flaky_get)
    store.download_dir("stage", tmp_path / "down")
    assert flipped and read_tree(tmp_path / "down") == files


def test_download_of_absent_output_says_so(store: Store, tmp_path: Path) -> None:
    store.write_bytes("stage/part.bin", b"x")  # files without a manifest are not an output
    assert store.read_manifest("stage") is None
    with pytest.raises(NotFoundError, match="has no _MANIFEST.json"):
        store.download_dir("stage", tmp_path / "down")


def test_interrupted_upload_leaves_no_output_and_retry_completes(store: Store,
                                                                 tmp_path: Path) -> None:
    files = make_checkpoint(tmp_path / "out", big_mb=12)
    stage = store.child("stage")
    stage.upload_dir(tmp_path / "out", fingerprint="old-inputs")
    assert is_complete(stage, "old-inputs")

    def die_half_way(done: int, total: int) -> None:
        if done > total // 3:
            raise Interrupted

    (tmp_path / "out" / "config.json").write_bytes(b'{"hidden_size": 128}')
    with pytest.raises(Interrupted):
        stage.upload_dir(tmp_path / "out", fingerprint="new-inputs", progress=die_half_way)
    # The old commit was withdrawn before any file changed, and the new one never happened.
    assert stage.read_manifest() is None
    assert not is_complete(stage, "new-inputs") and not is_complete(stage, "old-inputs")

    manifest = stage.upload_dir(tmp_path / "out", fingerprint="new-inputs")
    assert is_complete(stage, "new-inputs")
    assert manifest.files["config.json"].size == len(b'{"hidden_size": 128}')
    stage.download_dir("", tmp_path / "down")
    assert read_tree(tmp_path / "down") == {**files, "config.json": b'{"hidden_size": 128}'}


@pytest.mark.parametrize("direction", ["upload", "download"])
def test_server_restart_during_transfer_recovers(direction: str, s3_env: None, bucket: str,
                                                 s3_server: SeaweedServer,
                                                 tmp_path: Path) -> None:
    from boto3.s3.transfer import TransferConfig

    # One part request at a time: slow enough that the crash lands mid-transfer on fast hosts.
    one_at_a_time = TransferConfig(multipart_threshold=5 * MB, multipart_chunksize=5 * MB,
                                   max_concurrency=1, preferred_transfer_client="classic")
    store = open_store(f"s3://{bucket}/restart-{direction}-{uuid.uuid4().hex[:8]}",
                       endpoint=s3_server.endpoint, config=one_at_a_time)
    store.parallel_files = 1
    files = {f"shard-{i}.bin": os.urandom(24 * MB) for i in range(4)}
    for rel, data in files.items():
        (tmp_path / "src" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / rel).write_bytes(data)
    if direction == "download":
        store.upload_dir(tmp_path / "src", "out")

    restarted: list[tuple[int, int]] = []
    restarter: list[threading.Thread] = []

    def crash_and_restart(done: int, total: int) -> None:
        if done > 0 and not restarted:
            s3_server.kill()
            restarted.append((done, total))
            restarter.append(threading.Thread(target=s3_server.start, daemon=True))
            restarter[0].start()

    try:
        if direction == "upload":
            store.upload_dir(tmp_path / "src", "out", progress=crash_and_restart)
        else:
            store.download_dir("out", tmp_path / "down", progress=crash_and_restart)
    finally:
        for thread in restarter:
            thread.join(timeout=60)
        s3_server.start()  # whatever happened, leave a running server to the next test
    done_at_crash, total = restarted[0]
    assert done_at_crash < total, "the transfer finished before the crash; nothing was tested"
    target = tmp_path / "down" if direction == "download" else tmp_path / "check"
    if direction == "upload":
        store.download_dir("out", target)
    assert read_tree(target) == files


def s3_error(code: str, status: int, operation: str = "PutObject") -> Exception:
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": code},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


def test_throttling_is_retried_and_persistent_5xx_named(s3_env: None, bucket: str,
                                                        s3_server: SeaweedServer,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import fathom_jobs.store.transfer as transfer

    monkeypatch.setattr(transfer, "BACKOFF_BASE_S", 0.01)  # keep the test fast
    store = s3_store(s3_server, bucket)
    client = store._conn.client
    real_put = client.put_object
    calls: list[str] = []

    def throttled_twice(**kwargs):
        calls.append(kwargs["Key"])
        if len(calls) <= 2:
            raise s3_error("SlowDown", 503)
        return real_put(**kwargs)

    monkeypatch.setattr(client, "put_object", throttled_twice)
    store.write_json("progress.json", {"step": 1})
    assert len(calls) == 3 and store.read_json("progress.json") == {"step": 1}

    def always_broken(**kwargs):
        calls.append(kwargs["Key"])
        raise s3_error("InternalError", 500)

    calls.clear()
    monkeypatch.setattr(client, "put_object", always_broken)
    with pytest.raises(StoreError, match=r"writing s3://.*/progress.json failed: .*kept failing"):
        store.write_json("progress.json", {"step": 2})
    assert len(calls) == transfer.OUTER_ATTEMPTS


def test_wrong_credentials_give_clear_error_without_secret(
        s3_env: None, s3_server: SeaweedServer, bucket: str,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    wrong_secret = "wrong-" + uuid.uuid4().hex
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong_secret)
    store = open_store(f"s3://{bucket}/denied", endpoint=s3_server.endpoint)
    make_checkpoint(tmp_path / "out", big_mb=1)
    caplog.set_level(logging.DEBUG)
    for attempt in (lambda: store.read_manifest(), lambda: store.upload_dir(tmp_path / "out"),
                    lambda: store.exists("x")):
        with pytest.raises(AccessDeniedError) as caught:
            attempt()
        message = str(caught.value)
        assert message.startswith(f"access denied to s3://{bucket}/denied")
        assert "check the credentials secret" in message
        shown = message + repr(caught.value) + "".join(traceback.format_exception(caught.value))
        for secret in (wrong_secret, s3_server.secret_key):
            assert secret not in shown
            assert secret not in caplog.text
    assert repr(store) == f"S3Store('s3://{bucket}/denied')"


def test_missing_credentials_are_named(s3_env: None, s3_server: SeaweedServer,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = open_store("s3://nobody-bucket/x", endpoint=s3_server.endpoint)
    with pytest.raises(AccessDeniedError, match="no usable S3 credentials.*AWS_ACCESS_KEY_ID"):
        store.read_bytes("a")


def test_missing_bucket_is_a_configuration_error(s3_env: None,
                                                 s3_server: SeaweedServer) -> None:
    store = open_store("s3://no-such-bucket-here/x", endpoint=s3_server.endpoint)
    with pytest.raises(StoreError, match="bucket 'no-such-bucket-here' does not exist") as caught:
        store.read_manifest()  # must not answer "no output yet" for a wrong bucket name
    assert not isinstance(caught.value, NotFoundError)


# -- memoization ------------------------------------------------------------------------------


def test_fingerprint_is_canonical_and_content_based() -> None:
    entry = {"size": 3, "sha256": "a" * 64}
    upstream = Manifest.from_dict({"files": {"d.parquet": entry}, "created": "2025-01-01T00:00Z"})
    rerun = Manifest.from_dict({"files": {"d.parquet": entry}, "created": "2026-02-02T00:00Z"})
    base = fingerprint("sft", {"lr": 1e-5, "passes": 3}, "img:1", [upstream, None])
    assert base == fingerprint("sft", {"passes": 3, "lr": 1e-5}, "img:1", [rerun, None])
    assert base == fingerprint("sft", {"passes": 3, "lr": 1e-5}, "img:1", [rerun.to_dict(), None])
    changed = {"size": 3, "sha256": "b" * 64}
    others = [
        fingerprint("sft", {"lr": 2e-5, "passes": 3}, "img:1", [upstream, None]),
        fingerprint("grpo", {"lr": 1e-5, "passes": 3}, "img:1", [upstream, None]),
        fingerprint("sft", {"lr": 1e-5, "passes": 3}, "img:2", [upstream, None]),
        fingerprint("sft", {"lr": 1e-5, "passes": 3}, "img:1",
                    [{"files": {"d.parquet": changed}, "created": "x"}, None]),
    ]
    assert len({base, *others}) == 5
    with pytest.raises(ValueError, match="plain JSON"):
        fingerprint("sft", {"lr": float("nan")}, "img:1", [])


def test_memoization_hit_and_miss(store: Store, tmp_path: Path) -> None:
    make_checkpoint(tmp_path / "in", big_mb=1)
    upstream = store.child("corpus").upload_dir(tmp_path / "in")
    params = {"select": {"difficulty": {"min": 5}}}
    wanted = fingerprint("curate", params, "fathom/data:1", [upstream])
    stage = store.child("curriculum-set")
    assert not is_complete(stage, wanted)  # nothing there yet
    stage.upload_dir(tmp_path / "in", fingerprint=wanted)
    assert is_complete(stage, wanted)
    # Same inputs read back from the store: still a hit.
    assert is_complete(stage, fingerprint("curate", params, "fathom/data:1",
                                          [store.child("corpus").read_manifest()]))
    assert not is_complete(stage, fingerprint("curate", {"select": {}}, "fathom/data:1",
                                              [upstream]))


# -- checkpoints ------------------------------------------------------------------------------


def test_latest_checkpoint_skips_incomplete_newest(store: Store, tmp_path: Path) -> None:
    assert latest_checkpoint(store) is None
    with pytest.raises(NotFoundError, match="no complete checkpoint"):
        download_checkpoint(store, tmp_path / "none")
    make_checkpoint(tmp_path / "ckpt", big_mb=1)
    save_checkpoint(store, 1, tmp_path / "ckpt")
    second = save_checkpoint(store, 2, tmp_path / "ckpt")
    # A job killed while uploading step 3: its files are there, its manifest is not.
    store.write_bytes("checkpoints/step-3/model-00001-of-00002.safetensors", b"partial")
    assert latest_checkpoint(store) == (2, second)
    assert download_checkpoint(store, tmp_path / "restored") == 2


def test_save_checkpoint_prunes_to_last_k(store: Store, tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "w.bin").write_bytes(b"weights")
    store.write_bytes("checkpoints/step-0/w.bin", b"abandoned upload")
    for step in (1, 2, 10):
        save_checkpoint(store, step, tmp_path / "ckpt", keep=2)
    store.write_bytes("checkpoints/step-12/w.bin", b"in flight, newer")
    save_checkpoint(store, 11, tmp_path / "ckpt", keep=2)
    remaining = sorted({key.split("/")[1] for key in store.list("checkpoints")})
    # step-1 pruned without touching step-10/11; the newer in-flight step-12 is left alone.
    assert remaining == ["step-10", "step-11", "step-12"]
    assert latest_checkpoint(store) == (11, store.uri + "/checkpoints/step-11")
    with pytest.raises(ValueError, match="keep must be an integer >= 1"):
        save_checkpoint(store, 12, tmp_path / "ckpt", keep=0)


# -- progress and metrics ---------------------------------------------------------------------


def test_progress_is_throttled_and_final_state_written(store: Store) -> None:
    now = [100.0]
    writer = ProgressWriter(store, min_interval_s=5.0, clock=lambda: now[0])
    assert read_progress(store) is None
    assert writer.update(0, 100, loss=2.0)  # the first update shows up at once
    now[0] = 101.0
    assert not writer.update(10, 100, loss=1.5)
    assert read_progress(store)["step"] == 0
    now[0] = 106.0
    assert writer.update(60, 100, loss=1.0)
    progress = read_progress(store)
    assert progress is not None
    assert progress["step"] == 60 and progress["fraction"] == 0.6 and progress["loss"] == 1.0
    assert progress["rate"] == pytest.approx(10.0) and progress["eta_seconds"] == pytest.approx(4.0)
    assert progress["updated"].endswith("Z")
    now[0] = 107.0
    assert not writer.update(70, 100)
    writer.close()
    assert read_progress(store)["step"] == 70
    now[0] = 107.5
    assert writer.update(100, 100)  # the final step is never held back
    assert read_progress(store)["fraction"] == 1.0
    with pytest.raises(ValueError, match="reserved"):
        writer.update(1, 2, rate=3)


def test_metrics_round_trip(store: Store) -> None:
    write_metrics(store, {"aime25": {"pass@1": 52.71, "cons@64": 76.7}})
    assert store.read_json("metrics.json") == {"aime25": {"pass@1": 52.71, "cons@64": 76.7}}
    with pytest.raises(ValueError, match="not plain JSON"):
        write_metrics(store, {"loss": float("nan")})
    assert issubclass(IntegrityError, StoreError)
