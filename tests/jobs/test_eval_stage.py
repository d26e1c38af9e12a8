"""The eval stage: sharding, resuming, aggregation, and a run on the tiny model end to end."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fathom_jobs.__main__ import main as job_main
from fathom_jobs.engines import Completion
from fathom_jobs.grading import Grader
from fathom_jobs.specs import JobSpec
from fathom_jobs.stages import evaluate
from fathom_operator.api.status import RecipeStatus
from fathom_operator.results import eval_status

MC_QUESTION = ("Which colour is the sky?\n\nA. red\nB. green\nC. blue\nD. black\n\n"
               "Please reason step-by-step and put your choice letter without any other text with \\boxed{} in the end.")
# Five problems and, for each, the k = 4 responses the scripted engine gives ("..." = cut at the cap).
PROBLEMS = [
    ({"id": "p1", "problem": "What is 6*7?", "answer": 42},
     ["<think>6*7</think> So \\boxed{42}", "\\boxed{42}", "\\boxed{41}", "Let me think..."]),
    # 0.5 and 1/2 are one answer to the strict vote, two to the LIMO raw-string vote.
    ({"id": "p2", "problem": "Half of one?", "answer": "1/2"},
     ["\\boxed{0.5}", "\\boxed{\\frac{1}{2}}", "\\boxed{3}", "\\boxed{3}"]),
    ({"id": "p3", "problem": "3+7?", "answer": 10}, ["\\boxed{9}"] * 4),
    ({"id": "p4", "question": MC_QUESTION, "answer": "C"}, ["RIGHT", "RIGHT", "RIGHT", "WRONG"]),
    # A 2-2 tie: the answer seen first (8, wrong) wins.
    ({"id": "p5", "problem": "Prime after 5?", "answer": 7},
     ["\\boxed{8}", "\\boxed{7}", "\\boxed{7}", "\\boxed{8}"]),
]
EXPECTED = {"pass@1": 45.0, "cons@k": 60.0, "k": 4, "samples": 20, "problems": 5, "cappedPercent": 5.0,
            "limo": {"pass@1": 45.0, "cons@k": 40.0}}


class ScriptedEngine:
    """Answers each prompt with its script; RIGHT/WRONG pick a letter by the choice text shown."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.generated: list[str] = []
        self.fail_after = fail_after

    def generate(self, conversations, sampling, seeds=None):
        assert seeds is not None and len(seeds) == len(conversations)
        if self.fail_after is not None and len(self.generated) >= self.fail_after:
            raise RuntimeError("pod preempted")
        out = []
        for conversation in conversations:
            assert conversation[0] == {"role": "system", "content": evaluate.EvalParams.model_fields["system_prompt"].default}
            user = conversation[-1]["content"]
            # The multiple-choice question arrives shuffled, so it is found by a word, not its text.
            script = PROBLEMS[3][1] if "colour" in user else next(t for row, t in PROBLEMS if row.get("problem") == user)
            letters = dict(re.findall(r"\n([A-D])\. (\w+)", user))
            by_text = {text: letter for letter, text in letters.items()}
            texts = [f"\\boxed{{{by_text['blue'] if t == 'RIGHT' else by_text['red']}}}" if t in ("RIGHT", "WRONG")
                     else t for t in script][:sampling.n]
            out.append([Completion(text=t, tokens=10 * (i + 1), finish_reason="length" if t.endswith("...") else "stop")
                        for i, t in enumerate(texts)])
            self.generated.append(user)
        return out

    def close(self) -> None:
        pass


@pytest.fixture
def bench(tmp_path, monkeypatch) -> str:
    monkeypatch.setenv("FATHOM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FATHOM_STAGE_COSTS", raising=False)
    monkeypatch.delenv("FATHOM_CHECKPOINT_ROWS", raising=False)
    path = tmp_path / "five.jsonl"
    path.write_text("\n".join(json.dumps(row) for row, _ in PROBLEMS) + "\n")
    return f"file://{path}"


def job_for(output: Path, benchmark: str, shards: int = 1, models=("file:///models/fathom-r1",), **params) -> JobSpec:
    return JobSpec.model_validate({
        "recipe": "demo", "namespace": "ml", "stage": "eval", "type": "eval", "shards": shards,
        "params": {"models": list(models), "benchmarks": [benchmark], "samples": 4, "maxTokens": 64, **params},
        "output": f"file://{output}"})


def run_shard(job: JobSpec, shard: int, engine, monkeypatch) -> None:
    monkeypatch.setenv("JOB_COMPLETION_INDEX", str(shard))
    monkeypatch.setattr(evaluate, "load_engine", lambda params, uri, job_: engine)
    evaluate.run(job)


def check_expected(entry: dict) -> None:
    for key, value in EXPECTED.items():
        assert entry[key] == value, key


def test_sharded_run_aggregates_once_every_part_exists_and_matches_one_shard(tmp_path, bench, monkeypatch):
    sharded = tmp_path / "sharded"
    job = job_for(sharded, bench, shards=3)
    for shard in (2, 0):
        run_shard(job, shard, ScriptedEngine(), monkeypatch)
        assert not (sharded / "results.json").exists()
        assert (sharded / f"samples/fathom-r1/five/{shard}-of-3/_MANIFEST.json").exists()
    run_shard(job, 1, ScriptedEngine(), monkeypatch)  # the last to finish aggregates
    results = json.loads((sharded / "results.json").read_text())
    check_expected(results["fathom-r1"]["five"])
    # Each shard reports its own progress where the operator averages it.
    assert not (sharded / "progress.json").exists()
    for shard in range(3):
        progress = json.loads((sharded / f"shards/{shard}-of-3/progress.json").read_text())
        assert progress["fraction"] == 1.0 and progress["total"] == len(range(shard, 5, 3))
    manifest = json.loads((sharded / "_MANIFEST.json").read_text())
    assert set(manifest["files"]) == {"results.json", "metrics.json", "report.md", "report.html"}

    single = tmp_path / "single"
    run_shard(job_for(single, bench), 0, ScriptedEngine(), monkeypatch)
    assert json.loads((single / "results.json").read_text()) == results
    # Aggregation writes the same bytes from the same parts: two shards aggregating at once agree.
    assert (single / "report.html").read_bytes() == (sharded / "report.html").read_bytes()


def test_a_restarted_shard_resumes_after_its_checkpointed_problems(tmp_path, bench, monkeypatch):
    monkeypatch.setenv("FATHOM_CHECKPOINT_ROWS", "1")
    out = tmp_path / "out"
    job = job_for(out, bench)
    with pytest.raises(RuntimeError, match="preempted"):
        run_shard(job, 0, ScriptedEngine(fail_after=3), monkeypatch)
    assert not (out / "results.json").exists()
    retry = ScriptedEngine()
    run_shard(job, 0, retry, monkeypatch)
    assert len(retry.generated) == 2  # problems 4 and 5 only
    check_expected(json.loads((out / "results.json").read_text())["fathom-r1"]["five"])


def test_finished_stages_and_parts_are_not_sampled_again(tmp_path, bench, monkeypatch):
    out = tmp_path / "out"
    models = ("file:///m/alpha", "file:///runs/ml/demo/beta/")
    run_shard(job_for(out, bench, models=models), 0, ScriptedEngine(), monkeypatch)

    def no_engine(*args):
        raise AssertionError("nothing should be sampled")

    monkeypatch.setattr(evaluate, "load_engine", no_engine)
    evaluate.run(job_for(out, bench, models=models))  # the stage manifest matches: nothing to do
    # A third model: the stage is redone, but only the new model samples.
    third = ScriptedEngine()
    run_shard(job_for(out, bench, models=(*models, "hf://org/gamma@v2")), 0, third, monkeypatch)
    assert len(third.generated) == 5
    results = json.loads((out / "results.json").read_text())
    assert list(results) == ["alpha", "beta", "gamma"]
    # Other sampling parameters make other parts.
    reseeded = ScriptedEngine()
    run_shard(job_for(out, bench, models=models, seed=1), 0, reseeded, monkeypatch)
    assert len(reseeded.generated) == 10


def test_parts_keep_every_sample_with_grades_and_votes(tmp_path, bench, monkeypatch):
    import pyarrow.parquet as pq

    out = tmp_path / "out"
    run_shard(job_for(out, bench), 0, ScriptedEngine(), monkeypatch)
    [part] = (out / "samples/fathom-r1/five/0-of-1/data").glob("part-*.parquet")
    rows = {r["id"]: r for r in pq.read_table(part).to_pylist()}
    assert [s["answer"] for s in rows["p1"]["samples"]] == ["42", "42", "41", None]
    assert [s["finish_reason"] for s in rows["p1"]["samples"]] == ["stop", "stop", "stop", "length"]
    assert (rows["p2"]["cons_answer"], rows["p2"]["cons_votes"], rows["p2"]["cons_correct"]) == ("0.5", 2, True)
    assert (rows["p2"]["cons_answer_limo"], rows["p2"]["cons_correct_limo"]) == ("3", False)
    assert (rows["p5"]["cons_answer"], rows["p5"]["cons_correct"]) == ("8", False)
    mc = rows["p4"]
    assert mc["answer"] != "C" or mc["original_letters"][2] == "C"  # the gold letter moved with "blue"
    assert mc["original_letters"][ord(mc["answer"]) - ord("A")] == "C"
    assert [s["correct"] for s in mc["samples"]] == [True, True, True, False]


def test_costs_from_the_operator_reach_the_report(tmp_path, bench, monkeypatch):
    costs = {"sft": {"gpuHours": 48.0, "costUSD": 135.84}, "merge": {"gpuHours": 0.0, "costUSD": 0.02}}
    monkeypatch.setenv("FATHOM_STAGE_COSTS", json.dumps(costs))
    out = tmp_path / "out"
    run_shard(job_for(out, bench), 0, ScriptedEngine(), monkeypatch)
    assert json.loads((out / "costs.json").read_text()) == costs
    page = (out / "report.html").read_text()
    assert page.count("<img") == 3 and "135.84" in page
    assert "| sft | 48.00 | 135.84 |" in (out / "report.md").read_text()


def test_model_display_names():
    assert evaluate.model_names(["hf://deepseek-ai/DeepSeek-R1-Distill-Qwen-14B@main", "s3://b/ml/r/sft-curriculum/",
                                 "file://./runs/tiny-qwen2", "s3://other/run/sft-curriculum"]) == [
        "DeepSeek-R1-Distill-Qwen-14B", "sft-curriculum", "tiny-qwen2", "sft-curriculum-2"]


def test_strict_vote_groups_equivalent_answers_with_the_grader():
    from fathom_jobs.metrics import majority_vote

    with Grader("strict") as grader:
        vote = majority_vote(["3", "0.5", "\\frac{1}{2}", "3", "1/2"], [False, True, True, False, True],
                             evaluate.strict_matcher(grader))
    assert (vote.answer, vote.votes, vote.correct) == ("0.5", 3, True)


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tables = 0

    def handle_starttag(self, tag, attrs):
        self.images += [dict(attrs)["src"]] if tag == "img" else []
        self.tables += tag == "table"


def test_tiny_model_end_to_end_on_cpu(tmp_path, bench, tiny_model_dir, monkeypatch):
    second = tmp_path / "tiny-merged"
    second.symlink_to(tiny_model_dir, target_is_directory=True)
    out = tmp_path / "eval"
    spec = job_for(out, bench, shards=2, models=(f"file://{tiny_model_dir}", f"file://{second}"),
                   maxTokens=12, engine="transformers").model_dump(by_alias=True, mode="json")
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    for shard in (0, 1):
        monkeypatch.setenv("JOB_COMPLETION_INDEX", str(shard))
        assert job_main(["eval", "--spec", str(spec_path)]) == 0

    results = json.loads((out / "results.json").read_text())
    assert list(results) == ["tiny-model", "tiny-merged"]
    entry = results["tiny-model"]["five"]
    assert entry["k"] == 4 and entry["samples"] == 20 and entry["problems"] == 5
    assert 0 < entry["meanTokens"] <= 12 and set(entry["pass@k"]) == {"1", "2", "4"}
    # Same weights, same per-problem seeds: the two names must score identically.
    assert results["tiny-merged"]["five"] == entry

    parser = _Images()
    parser.feed((out / "report.html").read_text())
    assert parser.tables >= 3 and len(parser.images) == 2
    assert all(src.startswith("data:image/png;base64,") for src in parser.images)

    metrics = json.loads((out / "metrics.json").read_text())
    patch = eval_status(metrics, spec["output"])
    assert patch["report"] == f"file://{out}/report.html"
    status = RecipeStatus.model_validate({"phase": "Succeeded", **patch})
    assert status.results["tiny-model"]["five"].samples == 20
