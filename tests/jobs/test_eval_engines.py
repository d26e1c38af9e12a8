"""The eval stage with vLLM (against the recording fake in tests/support/fake_vllm): every problem x
sample of a part in one generate call, one model's engine freed before the next loads, the stage's
engine settings on every engine; and the LIMO prompt style."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from fathom_jobs.benchmarks import load_benchmark
from fathom_jobs.engines import derive_seed
from fathom_jobs.specs import SEED_SYSTEM_PROMPT, EvalParams, JobSpec
from fathom_jobs.stages import evaluate
from tests.support import vllm_fake


@pytest.fixture
def fake_vllm(monkeypatch, tmp_path):
    yield from vllm_fake.installed(monkeypatch, tmp_path)


@pytest.fixture(autouse=True)
def quiet_env(tmp_path, monkeypatch):
    monkeypatch.setenv("FATHOM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "0")
    monkeypatch.delenv("FATHOM_STAGE_COSTS", raising=False)
    monkeypatch.delenv("FATHOM_CHECKPOINT_ROWS", raising=False)


def eval_job(out, models, gpus: int = 1, **params) -> JobSpec:
    return JobSpec.model_validate({
        "recipe": "demo", "namespace": "ml", "stage": "eval", "type": "eval", "gpusPerNode": gpus,
        "params": {"models": models, "benchmarks": ["aime25"], "samples": 16, "maxTokens": 64, **params},
        "output": f"file://{out}"})


def test_each_part_is_one_generate_call_and_each_model_is_freed_before_the_next(
        fake_vllm, tiny_model_dir, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: fake_vllm.module.record("empty_cache"))
    second = tmp_path / "tiny-merged"
    second.symlink_to(tiny_model_dir, target_is_directory=True)
    out = tmp_path / "eval"
    evaluate.run(eval_job(out, [f"file://{tiny_model_dir}", f"file://{second}"], gpuMemoryUtilization=0.8,
                          kvCacheDtype="fp8"))

    per_model = [["LLM", "generate", "engine core shutdown", "LLM freed", "destroy_model_parallel",
                  "destroy_distributed_environment", "empty_cache"]] * 2
    assert [e["event"] for e in fake_vllm.events()] == per_model[0] + per_model[1]
    loads = fake_vllm.events("LLM")
    assert [e["kwargs"]["model"] for e in loads] == [str(tiny_model_dir), str(second)]
    assert loads[0]["kwargs"] == dict(model=str(tiny_model_dir), tensor_parallel_size=1, seed=0, dtype="auto",
                                      gpu_memory_utilization=0.8, kv_cache_dtype="fp8", enable_prefix_caching=True,
                                      max_model_len=4096)  # 64 + 4,096, within the tiny model's 4,096 positions
    # All 30 AIME25 problems x 16 samples in one call: two requests of 8 per problem, seeded per problem.
    problems = load_benchmark("aime25").problems
    for call in fake_vllm.events("generate"):
        assert len(call["params"]) == 60 and {p["n"] for p in call["params"]} == {8}
        assert [p["seed"] for p in call["params"]] == [derive_seed(0, f"aime25/{p.id}") + first
                                                       for p in problems for first in (0, 8)]
    results = json.loads((out / "results.json").read_text())
    assert list(results) == ["tiny-model", "tiny-merged"]
    assert results["tiny-model"]["aime25"]["samples"] == 480


def test_large_parts_are_cut_into_calls_of_so_many_chains(fake_vllm, tiny_model_dir, tmp_path, monkeypatch):
    import fathom_jobs.engines as engines

    monkeypatch.setattr(engines, "CHAINS_PER_CALL", 128)  # 8,192 in production: 30 x 16 chains would be one call
    out = tmp_path / "eval"
    evaluate.run(eval_job(out, [f"file://{tiny_model_dir}"]))
    # 128 chains = 8 problems x 16 samples per call (and checkpoint): 8 + 8 + 8 + 6 problems.
    assert [len(c["params"]) // 2 for c in fake_vllm.events("generate")] == [8, 8, 8, 6]
    assert json.loads((out / "results.json").read_text())["tiny-model"]["aime25"]["problems"] == 30


class RecordingEngine:
    def __init__(self) -> None:
        self.conversations: list[list[dict]] = []

    def generate(self, conversations, sampling, seeds=None):
        from fathom_jobs.engines import Completion

        self.conversations += conversations
        return [[Completion("\\boxed{1}", 5, "stop")] * sampling.n for _ in conversations]

    def close(self) -> None:
        pass


def test_limo_prompt_style_sends_limo_s_prompt(tmp_path, monkeypatch):
    bench = tmp_path / "two.jsonl"
    bench.write_text(json.dumps({"id": "a", "problem": "  What is 1?\n", "answer": "1"}) + "\n"
                     + json.dumps({"id": "b", "problem": "What is 2?", "answer": "2"}) + "\n")
    engines: list[RecordingEngine] = []

    def load_engine(params, uri, job):
        engines.append(RecordingEngine())
        return engines[-1]

    monkeypatch.setattr(evaluate, "load_engine", load_engine)

    def run(out, **params):
        job = JobSpec.model_validate({
            "recipe": "demo", "namespace": "ml", "stage": "eval", "type": "eval", "output": f"file://{out}",
            "params": {"models": ["file:///m/alpha"], "benchmarks": [f"file://{bench}"], "samples": 2, **params}})
        evaluate.run(job)

    run(tmp_path / "limo", promptStyle="limo")
    # GAIR-NLP/LIMO eval/prompts/qwen-instruct/*.py: system_prompt, question_format "{question}" (stripped).
    assert engines[-1].conversations == [
        [{"role": "system", "content": "Please reason step by step, and put your final answer within \\boxed{}."},
         {"role": "user", "content": "What is 1?"}],
        [{"role": "system", "content": "Please reason step by step, and put your final answer within \\boxed{}."},
         {"role": "user", "content": "What is 2?"}]]
    assert "- prompt style: limo" in (tmp_path / "limo" / "report.md").read_text()
    # The default style keeps the problem as written; a part made with one style is not reused for the other.
    run(tmp_path / "limo", promptStyle="default")
    assert engines[-1].conversations[0] == [{"role": "system", "content": SEED_SYSTEM_PROMPT},
                                            {"role": "user", "content": "  What is 1?\n"}]
    with pytest.raises(ValidationError, match="promptStyle limo sends LIMO's own system prompt"):
        EvalParams(models=["base"], promptStyle="limo", systemPrompt="Think.")


def test_where_engines_run_does_not_redo_finished_parts():
    pair = evaluate.Pair("m", "file:///m", {"uri": "file:///m"}, load_benchmark("aime25"), {"uri": "aime25"})
    base = EvalParams(models=["base"])
    same = [base.model_copy(update=u) for u in ({"gpu_memory_utilization": 0.5}, {"tensor_parallel_size": 2},
                                               {"enable_prefix_caching": False})]
    other = [base.model_copy(update=u) for u in ({"kv_cache_dtype": "fp8"}, {"prompt_style": "limo"}, {"seed": 1})]
    assert {pair.fingerprint(p, 0, 1) for p in [base, *same]} == {pair.fingerprint(base, 0, 1)}
    assert len({pair.fingerprint(p, 0, 1) for p in [base, *other]}) == 4
