"""What the operator reads from the artifact store, against real file:// stores.

The memo check must compute the very fingerprint a stage's Job writes into its manifest, or a
complete output would never be recognised: these tests pin the operator to the job side
(`fathom_jobs.memo.job_fingerprint` over `fathom_jobs.datasets.dataset_identity`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fathom_jobs.datasets import dataset_identity
from fathom_jobs.memo import job_fingerprint, stage_inputs
from fathom_jobs.store import fingerprint, open_store, save_checkpoint
from fathom_operator.render import job_spec, resolved_params, stage_by_name, stage_image
from fathom_operator.store_reader import Read, StoreReader, stage_progress
from fathom_operator.validate import validate_document
from tests.support.helpers import example

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def commit(store_uri: str, files: dict[str, str], tmp: Path, fp: str | None = None, rel: str = "") -> None:
    local = tmp / f"out-{abs(hash((store_uri, rel)))}"
    for name, text in files.items():
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_text(text)
    open_store(store_uri).upload_dir(local, rel, fingerprint=fp)


@pytest.fixture
def recipe(tmp_path):
    doc = example("fathom-r1-14b.yaml")
    doc["spec"]["storage"] = {"uri": f"file://{tmp_path}/runs"}
    return validate_document(doc)


def test_memo_hits_exactly_when_the_job_side_fingerprint_matches(recipe, tmp_path, monkeypatch):
    spec = recipe.spec
    upstream = f"file://{tmp_path}/runs/ml/fathom-r1-14b/solve/"
    commit(upstream, {"data/part-00000.parquet": "samples"}, tmp_path)
    stage = stage_by_name(spec, "curriculum-set")
    job = job_spec(recipe, stage, 0, "ml")
    # What the curate Job computes (it reads its image from FATHOM_IMAGE, which the operator sets).
    monkeypatch.setenv("FATHOM_IMAGE", stage_image(spec, stage))
    job_fp = job_fingerprint(job)
    read = Read("memo", "curriculum-set", "k", {"stage_type": "curate", "params": resolved_params(spec, "ml", "fathom-r1-14b", stage),
                                               "image": stage_image(spec, stage), "output": job.output, "storage": {}})
    reader = StoreReader()
    assert reader.read(read, NOW).value == {"hit": False}  # no output yet
    commit(job.output, {"data/part-00000.parquet": "chains"}, tmp_path, fp=job_fp)
    assert reader.read(read, NOW).value == {"hit": True, "fingerprint": job_fp}
    commit(upstream, {"data/part-00000.parquet": "different samples"}, tmp_path)  # the input changed
    assert reader.read(read, NOW).value["hit"] is False


def _fp(identity) -> str:
    return fingerprint("t", {}, "", [identity])


@pytest.mark.parametrize("kind", ["shipped", "hub", "committed", "sharded", "missing", "file"])
def test_input_identities_match_the_job_side(kind, tmp_path):
    uri = {"shipped": "aime25", "hub": "hf://open-r1/OpenR1-Math-220k", "missing": f"file://{tmp_path}/nothing/",
           "committed": f"file://{tmp_path}/a/", "sharded": f"file://{tmp_path}/s/", "file": f"file://{tmp_path}/p.jsonl"}[kind]
    if kind == "committed":
        commit(uri, {"data/part-00000.parquet": "rows"}, tmp_path)
    if kind == "sharded":
        for i in range(2):
            commit(uri, {"data/part-00000.parquet": f"shard {i}"}, tmp_path, rel=f"shards/{i}-of-2")
    if kind == "file":
        Path(uri[len("file://"):]).write_text('{"problem": "1+1", "answer": "2"}\n')
    assert _fp(StoreReader().identity(uri, {})) == _fp(dataset_identity(uri))


def test_memo_inputs_follow_each_stage_types_job(recipe):
    spec = recipe.spec
    params = {s.name: resolved_params(spec, "ml", "fathom-r1-14b", s) for s in spec.stages}
    root = spec.storage.uri
    assert stage_inputs("prepare", params["corpus"]) == [
        "hf://open-r1/OpenR1-Math-220k", "hf://AI-MO/NuminaMath-1.5", "aime25", "hmmt25", "gpqa-diamond"]
    assert stage_inputs("solve-rate", params["solve"]) == [
        f"{root}/ml/fathom-r1-14b/difficulty/", "hf://deepseek-ai/DeepSeek-R1-Distill-Qwen-14B"]
    assert stage_inputs("eval", params["eval"])[-3:] == ["aime25", "hmmt25", "gpqa-diamond"]


def test_progress_metrics_and_results_are_read_from_the_stage_prefix(tmp_path):
    out = f"file://{tmp_path}/runs/ml/r/eval/"
    store = open_store(out)
    store.write_json("progress.json", {"step": 30, "total": 120, "fraction": 0.25, "eta_seconds": 900.4})
    store.write_json("metrics.json", {"problems": 120})
    store.write_json("results.json", {"base": {"aime25": {"pass@1": 45.5, "cons@k": 63.33}}})
    reader = StoreReader()
    progress = reader.read(Read("progress", "eval", "0", {"output": out, "storage": {}}), NOW)
    assert stage_progress(progress.value, NOW, NOW) == {"fraction": 0.25, "step": 30, "total": 120, "etaSeconds": 900}
    metrics = reader.read(Read("metrics", "eval", "fp", {"output": out, "storage": {}, "results": True}), NOW).value
    assert metrics == {"metrics": {"problems": 120}, "results": {"base": {"aime25": {"pass@1": 45.5, "cons@k": 63.33}}}}


def test_sharded_progress_is_the_mean_of_the_shards(tmp_path):
    out = f"file://{tmp_path}/runs/ml/r/solve/"
    store = open_store(out)
    commit(out, {"x": "1"}, tmp_path, rel="shards/0-of-2")
    commit(out, {"x": "2"}, tmp_path, rel="shards/1-of-2")
    store.write_json("shards/0-of-2/progress.json", {"step": 10, "total": 10, "fraction": 1.0})
    store.write_json("shards/1-of-2/progress.json", {"step": 0, "total": 10, "fraction": 0.0, "eta_seconds": 60})
    value = StoreReader().read(Read("progress", "solve", "0", {"output": out, "storage": {}}), NOW).value
    assert value == {"fraction": 0.5, "eta_seconds": 60, "step": 10, "total": 20}


def test_an_unreadable_store_is_a_fact_with_an_error_not_an_exception(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "progress.json").write_text("{not json")
    fact = StoreReader().read(Read("progress", "s", "0", {"output": f"file://{tmp_path}/runs/", "storage": {}}), NOW)
    assert fact.value is None and "not valid JSON" in fact.error


def test_a_retry_resumes_only_from_checkpoints_written_by_this_run(tmp_path):
    out = f"file://{tmp_path}/runs/ml/r/sft/"
    local = tmp_path / "ckpt"
    local.mkdir()
    (local / "model.safetensors").write_text("weights")
    uri = save_checkpoint(open_store(out), 200, local)
    reader = StoreReader()

    def newest(not_before: datetime) -> str | None:
        args = {"output": out, "storage": {}, "not_before": not_before.strftime("%Y-%m-%dT%H:%M:%SZ")}
        return reader.read(Read("checkpoint", "sft", "k", args), NOW).value

    now = datetime.now(UTC)
    assert newest(now - timedelta(hours=1)) == uri
    assert newest(now + timedelta(hours=1)) is None  # older than this run of the stage: another spec's
