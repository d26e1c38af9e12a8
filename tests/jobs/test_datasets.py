"""inputs and datasets: reference resolution, verified fetches, and reading outputs as one table."""

from __future__ import annotations

import os

import pytest

from fathom_jobs.datasets import (
    PROBLEMS,
    interleave,
    read_corpus_records,
    read_dataset,
    read_rows,
    read_shipped,
    write_dataset,
)
from fathom_jobs.errors import StageInputError
from fathom_jobs.inputs import fetch, parse_hf, resolve_file_uri, store_for
from fathom_jobs.specs import CorpusSource
from tests.support.jobs_helpers import file_uri

ROWS = [{"id": f"r{i}", "problem": f"P{i}", "answer": str(i), "solution": None, "source": "s"} for i in range(5)]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FATHOM_CACHE_DIR", str(tmp_path / "cache"))


def test_relative_file_uris_resolve_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_file_uri("file://./runs/x") == f"file://{tmp_path}/runs/x"
    assert resolve_file_uri("file://runs/x") == f"file://{tmp_path}/runs/x"
    assert resolve_file_uri("file:///abs/x") == "file:///abs/x"
    write_dataset(store_for("file://./runs/corpus"), ROWS, PROBLEMS, fingerprint=None)
    assert read_rows("file://./runs/corpus") == ROWS


def test_fetch_verifies_store_outputs_and_uses_plain_directories_in_place(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    assert fetch(file_uri(model)) == model  # no manifest: a directory no stage wrote

    output = file_uri(tmp_path / "store" / "sft")
    store_for(output).upload_dir(model, "")
    local = fetch(output)
    assert local != model and (local / "config.json").read_text() == "{}"
    (tmp_path / "store" / "sft" / "config.json").write_text('{"tampered": 1}')
    assert fetch(output) == local  # the verified copy is reused while the manifest is unchanged
    # A tampered file is refused before it is read past the size its manifest claims.
    with pytest.raises(StageInputError, match="is 15 bytes, but _MANIFEST.json says 2: not downloaded"):
        fetch(output, cache_dir=tmp_path / "fresh-cache")
    with pytest.raises(StageInputError, match="does not exist"):
        fetch(file_uri(tmp_path / "missing"))


def test_hub_references_are_parsed():
    repo = "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B"
    assert parse_hf(f"hf://{repo}@main") == (repo, "main")
    assert parse_hf("hf://org/name") == ("org/name", None)
    with pytest.raises(StageInputError, match="hf://org/name"):
        parse_hf("hf://just-a-name")


def test_shards_read_back_in_input_order_and_mixed_counts_are_refused(tmp_path):
    uri = file_uri(tmp_path / "store" / "solve")
    store = store_for(uri)
    write_dataset(store.child("shards/0-of-2"), ROWS[0::2], PROBLEMS, fingerprint=None)
    write_dataset(store.child("shards/1-of-2"), ROWS[1::2], PROBLEMS, fingerprint=None)
    assert read_rows(uri) == ROWS
    write_dataset(store.child("shards/0-of-3"), ROWS[:1], PROBLEMS, fingerprint=None)
    with pytest.raises(StageInputError, match="mixes shard counts \\[2, 3\\]"):
        read_dataset(uri)


def test_interleave_handles_uneven_shards():
    import pyarrow as pa

    tables = [pa.table({"i": [0, 3]}), pa.table({"i": [1, 4]}), pa.table({"i": [2]})]
    assert interleave(tables).column("i").to_pylist() == [0, 1, 2, 3, 4]


def test_shipped_sets_and_plain_files(tmp_path):
    assert len(read_shipped("gpqa-diamond")) == 198  # U+2028 inside strings must not split lines
    assert read_dataset("aime25").num_rows == 30
    path = tmp_path / "bad.jsonl"
    path.write_text('{"problem": "a"}\n{oops\n')
    with pytest.raises(StageInputError, match="not valid JSON Lines: .* at line 2"):
        read_dataset(file_uri(path))


def test_through_s3_sharded_outputs_models_and_single_object_corpora(tmp_path, monkeypatch, s3_server):
    for name in [n for n in os.environ if n.startswith(("AWS_", "FATHOM_S3"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("FATHOM_S3_ENDPOINT", s3_server.endpoint)
    s3_server.create_bucket("fathom-datasets")
    root = "s3://fathom-datasets/ns/recipe"

    store = store_for(f"{root}/solve")
    write_dataset(store.child("shards/1-of-2"), ROWS[1::2], PROBLEMS, fingerprint=None)
    with pytest.raises(StageInputError, match="shard\\(s\\) 0-of-2 have no _MANIFEST.json"):
        read_dataset(f"{root}/solve")
    write_dataset(store.child("shards/0-of-2"), ROWS[0::2], PROBLEMS, fingerprint=None)
    assert read_rows(f"{root}/solve") == ROWS

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"hidden_size": 64}')
    store_for(f"{root}/sft").upload_dir(model, "")
    assert (fetch(f"{root}/sft") / "config.json").read_text() == '{"hidden_size": 64}'

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"problem": "What is 1+1?", "answer": 2}\n')
    store_for(root).upload_file(corpus, "corpus.jsonl")
    assert read_corpus_records(CorpusSource(uri=f"{root}/corpus.jsonl")) == [{"problem": "What is 1+1?", "answer": 2}]
    with pytest.raises(StageInputError, match="no _MANIFEST.json"):
        fetch(f"{root}/nothing-here")
