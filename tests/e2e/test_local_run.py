"""`fathom run --local`: the tiny recipe end to end on CPU through the operator's own plan, and what
its stages learn on the demo's arithmetic task."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from fathom_jobs.datasets import read_rows
from fathom_jobs.store import open_store
from fathom_jobs.tiny import HELDOUT_NAME, build_demo_model
from fathom_operator.local import LocalRun, run_local
from tests.support.helpers import EXAMPLES

# Guards on what the recipe learns, on the held-out benchmark (60 problems x 4 chains, pass@1 in
# points). Measured with the base built from seeds 0 / 1 / 2 (the recipe's own seeds fixed; CI builds
# seed 0): SFT gain +10.8 / +3.8 / +7.9; GRPO pass@1 change 0.0 / 0.0 / +1.3 with mean tokens
# -4 / -3 / -1; merge minus the weaker parent +2.5 / +5.4 / +9.2; judge Spearman 1.0 x 3. Each
# guard fails when its stage is broken on purpose (SFT labels masked: -31.7; the length reward's sign
# flipped: longer chains; merge weights not normalized: pass@1 0).
BENCHMARK = HELDOUT_NAME
SFT_GAIN = 3.0  # pass@1 points the curriculum SFT adds to the base, at least
GRPO_KEEP = 3.0  # pass@1 points GRPO may lose while it shortens
MERGE_KEEP = 3.0  # pass@1 points the merge may fall below the weaker parent
JUDGE_SPEARMAN = 0.9  # the local judge's ratings against the difficulty by construction


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@dataclass
class TinyRun:
    workdir: Path
    first: LocalRun
    second: LocalRun

    def rows(self, stage: str) -> list[dict]:
        return read_rows(f"file://{self.workdir}/runs/local/tiny-cpu/{stage}")

    def result(self, model: str) -> dict:
        return self.first.status["results"][model][BENCHMARK]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> TinyRun:
    """ONE run of the tiny recipe (and its memoized rerun), shared by every test that reads it."""
    workdir = tmp_path_factory.mktemp("tiny-run")
    # As `make demo`: the warmed-up base, its task beside it; the recipe names file://./runs/...
    build_demo_model(workdir / "runs" / "tiny-qwen2")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        patch.setenv("OMP_NUM_THREADS", "1")  # as `make demo`: two stage processes, a thread each
        first = run_local(EXAMPLES / "tiny-cpu.yaml", workdir / "runs", slots=2, poll_seconds=0.5)
        second = run_local(EXAMPLES / "tiny-cpu.yaml", workdir / "runs", slots=2, poll_seconds=0.2)
    return TinyRun(workdir, first, second)


def test_tiny_recipe_runs_every_stage_then_is_fully_memoized(tiny_run):
    recipe = yaml.safe_load((EXAMPLES / "tiny-cpu.yaml").read_text())
    stages = [s["name"] for s in recipe["spec"]["stages"]]
    assert {s["type"] for s in recipe["spec"]["stages"]} == {
        "prepare", "annotate", "solve-rate", "curate", "grpo", "sft", "merge", "eval"}

    status = tiny_run.first.status
    failed = {n: s.get("message") for n, s in status["stages"].items() if s["phase"] != "Succeeded"}
    assert status["phase"] == "Succeeded", failed
    store = open_store(f"file://{tiny_run.workdir}/runs")
    for stage in stages:
        manifest = store.child(f"local/tiny-cpu/{stage}").read_manifest()
        assert manifest is not None and manifest.files, f"{stage} left no complete output"
    results = status["results"]
    assert list(results) == ["tiny-qwen2", "sft-curriculum", "grpo-compress", "sft-shortest", "tiny-merged"]
    for per_benchmark in results.values():
        entry = per_benchmark[BENCHMARK]
        assert 0.0 <= entry["pass@1"] <= 100.0 and entry["k"] == 4 and entry["samples"] == 60 * 4
        assert entry["meanTokens"] > 0
    assert status["report"].endswith("/eval/report.html")
    # Priced as CPU-seconds at the pool's cpuHourUSD: small, but not nothing.
    assert sum(r["costUSD"] for st in status["stages"].values() for r in st["history"]) > 0

    second = tiny_run.second
    assert {n: s["phase"] for n, s in second.status["stages"].items()} == {n: "Cached" for n in stages}
    assert second.cluster.jobs == {}, "a memoized run must start no process"
    assert second.status["results"] == results


def test_prepare_removes_every_held_out_problem_planted_in_the_corpus(tiny_run):
    heldout = {json.loads(line)["problem"] for line in
               (tiny_run.workdir / "runs" / "tiny-arith" / f"{HELDOUT_NAME}.jsonl").read_text().splitlines()}
    corpus = tiny_run.rows("corpus")
    assert corpus and not heldout & {r["problem"] for r in corpus}


def spearman(xs: list[float], ys: list[float]) -> float:
    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0.0] * len(values)
        i = 0
        while i < len(order):  # ties share their mean rank
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    var = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return cov / var if var else 0.0


def test_the_local_judge_rates_difficulty_like_the_construction(tiny_run):
    truth = {json.loads(line)["problem"]: json.loads(line)["difficulty"] for line in
             (tiny_run.workdir / "runs" / "tiny-arith" / "train.jsonl").read_text().splitlines()}
    rated = [(truth[r["problem"]], r["difficulty"]) for r in tiny_run.rows("difficulty")]
    assert sum(judge is not None for _, judge in rated) >= 0.9 * len(rated), rated
    pairs = [(t, j) for t, j in rated if j is not None]
    assert spearman([t for t, _ in pairs], [j for _, j in pairs]) >= JUDGE_SPEARMAN


def test_solve_rate_bands_select_real_subsets(tiny_run):
    problems = len(tiny_run.rows("solve"))
    for stage in ("curriculum-set", "rl-set", "shortest-set"):
        assert 0 < len(tiny_run.rows(stage)) < problems, stage


def test_curriculum_sft_beats_the_base(tiny_run):
    base, sft = tiny_run.result("tiny-qwen2"), tiny_run.result("sft-curriculum")
    assert sft["pass@1"] >= base["pass@1"] + SFT_GAIN, (base, sft)


def test_grpo_shortens_chains_without_losing_accuracy(tiny_run):
    base, grpo = tiny_run.result("tiny-qwen2"), tiny_run.result("grpo-compress")
    assert grpo["meanTokens"] < base["meanTokens"], (base, grpo)
    assert grpo["pass@1"] >= base["pass@1"] - GRPO_KEEP, (base, grpo)


def test_the_merge_keeps_its_parents_accuracy(tiny_run):
    parents = [tiny_run.result(m)["pass@1"] for m in ("sft-curriculum", "sft-shortest")]
    assert tiny_run.result("tiny-merged")["pass@1"] >= min(parents) - MERGE_KEEP, parents


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
