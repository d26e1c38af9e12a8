"""`fathom run --local`: the tiny recipe end to end on CPU through the operator's own plan."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fathom_jobs.store import open_store
from fathom_operator.local import run_local
from tests.support.helpers import EXAMPLES


@pytest.fixture
def workdir(tmp_path, monkeypatch, tiny_model_dir) -> Path:
    # The recipe names its base model file://./runs/tiny-qwen2, relative to the working directory.
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_model_dir, tmp_path / "runs" / "tiny-qwen2")
    return tmp_path


def test_tiny_recipe_runs_every_stage_then_is_fully_memoized(workdir):
    recipe = yaml.safe_load((EXAMPLES / "tiny-cpu.yaml").read_text())
    stages = [s["name"] for s in recipe["spec"]["stages"]]
    assert {s["type"] for s in recipe["spec"]["stages"]} == {
        "prepare", "annotate", "solve-rate", "curate", "grpo", "sft", "merge", "eval"}

    first = run_local(EXAMPLES / "tiny-cpu.yaml", workdir / "runs", slots=2, poll_seconds=0.5)
    status = first.status
    failed = {n: s.get("message") for n, s in status["stages"].items() if s["phase"] != "Succeeded"}
    assert status["phase"] == "Succeeded", failed
    store = open_store(f"file://{workdir}/runs")
    for stage in stages:
        manifest = store.child(f"local/tiny-cpu/{stage}").read_manifest()
        assert manifest is not None and manifest.files, f"{stage} left no complete output"
    results = status["results"]
    assert set(results) == {"tiny-qwen2", "tiny-merged"}
    for per_benchmark in results.values():
        entry = per_benchmark["aime25"]
        assert 0.0 <= entry["pass@1"] <= 100.0 and entry["k"] == 4 and entry["samples"] == 30 * 4
        assert entry["meanTokens"] > 0
    assert status["report"].endswith("/eval/report.html")
    # Priced as CPU-seconds at the pool's cpuHourUSD: small, but not nothing.
    assert sum(r["costUSD"] for st in status["stages"].values() for r in st["history"]) > 0

    second = run_local(EXAMPLES / "tiny-cpu.yaml", workdir / "runs", slots=2, poll_seconds=0.2)
    assert {n: s["phase"] for n, s in second.status["stages"].items()} == {n: "Cached" for n in stages}
    assert second.cluster.jobs == {}, "a memoized run must start no process"
    assert second.status["results"] == results


def test_a_failing_stage_reports_the_jobs_own_message(workdir):
    recipe = {
        "apiVersion": "fathom.dev/v1alpha1", "kind": "FathomRecipe", "metadata": {"name": "broken"},
        "spec": {"baseModel": "file://./runs/tiny-qwen2", "storage": {"uri": "file://./runs"},
                 "nodePools": {"cpu": {"cpuHourUSD": 0.04}},
                 "stages": [{"name": "corpus", "type": "prepare", "pool": "cpu", "retries": 1,
                             "sources": [{"uri": "file://./no/such/corpus.jsonl"}]}]},
    }
    path = workdir / "broken.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run = run_local(path, workdir / "runs", poll_seconds=0.2)
    stage = run.status["stages"]["corpus"]
    assert run.status["phase"] == "Failed"
    assert stage["phase"] == "Failed" and stage["failures"] == 2 and stage["attempts"] == 2
    assert "no/such/corpus.jsonl" in stage["message"]


def test_cli_rejects_an_invalid_recipe_with_field_paths(workdir):
    doc = yaml.safe_load((EXAMPLES / "tiny-cpu.yaml").read_text())
    doc["spec"]["stages"][1]["data"] = "corpuss"
    path = workdir / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = subprocess.run([sys.executable, "-m", "fathom_operator.cli", "run", "--local", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert 'spec.stages[1].data: no stage named "corpuss" (did you mean "corpus"?)' in result.stderr
    assert not (workdir / "runs" / "local" / "bad").exists() or not any((workdir / "runs" / "local").iterdir())
