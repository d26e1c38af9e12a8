"""solve-rate: grading and per-cap solve rates, the difficulty filter before sampling, shards whose
union is the unsharded run, resume after a crash, incomplete shards refused by the reader, and the
CLI - on scripted replies and the tiny model. One long pass graded at several caps equals separate
capped runs: tests/jobs/test_solve_rate_caps.py; adaptive sampling: tests/jobs/test_adaptive_sampling.py."""

from __future__ import annotations

import json

import pytest

from fathom_jobs.datasets import ANNOTATED, read_dataset, read_rows, write_dataset
from fathom_jobs.engines import Completion
from fathom_jobs.errors import StageInputError
from fathom_jobs.inputs import store_for
from fathom_jobs.stages import solve_rate
from tests.support.jobs_helpers import file_uri, make_job, run_cli

PROBLEMS = [
    {"id": f"q{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i), "solution": None, "source": "t",
     "difficulty": None if i == 4 else i + 3, "difficulty_raw": "x"}
    for i in range(5)
]


@pytest.fixture(autouse=True)
def small_parts(tmp_path, monkeypatch):
    monkeypatch.setenv("FATHOM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FATHOM_CHECKPOINT_ROWS", "2")
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)


def problems_uri(tmp_path, rows=PROBLEMS) -> str:
    uri = file_uri(tmp_path / "store" / "difficulty")
    write_dataset(store_for(uri), rows, ANNOTATED, fingerprint="difficulty")
    return uri


def solve_job(data: str, model: str, output: str, shards: int = 1, **params):
    return make_job("solve-rate", {"data": data, "model": model, "samples": 2, "maxTokens": 6,
                                   "temperature": 1.0, "engine": "transformers", "seed": 3, **params},
                    output, shards=shards)


class ScriptedEngine:
    """Chain j of each problem from a table (found by its seed), so grading and rates can be checked
    exactly; a chain longer than the cap comes back cut at the cap, as an engine returns it."""

    def __init__(self, replies, problems=PROBLEMS, seed=3):
        self.replies, self.calls = replies, []
        self.chain_of = {solve_rate.sample_seed(seed, p["id"], j): (p["problem"], j)
                         for p in problems for j in range(len(next(iter(replies.values()))))}

    def generate(self, conversations, sampling, seeds=None):
        self.calls.append(len(conversations))
        out = []
        for conversation, seed in zip(conversations, seeds, strict=True):
            problem, j = self.chain_of[seed]
            assert conversation[-1]["content"] == problem and sampling.n == 1
            c = self.replies[problem][j]
            out.append([c if c.tokens <= sampling.max_tokens else Completion(c.text, sampling.max_tokens, "length")])
        return out

    def close(self):
        pass


class Recorder:
    """Wraps an engine: records the problems it was asked, and dies after `fail_after_calls` calls."""

    def __init__(self, engine, fail_after_calls=None):
        self.engine, self.fail_after_calls, self.calls, self.prompts = engine, fail_after_calls, 0, []

    def generate(self, conversations, sampling, seeds=None):
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise RuntimeError("killed")
        self.calls += 1
        self.prompts += [c[-1]["content"] for c in conversations]
        return self.engine.generate(conversations, sampling, seeds)

    def close(self):
        self.engine.close()


def scripted(monkeypatch, tmp_path, replies):
    engine = ScriptedEngine(replies)
    monkeypatch.setattr(solve_rate, "open_engine", lambda *a, **k: engine)
    monkeypatch.setattr(solve_rate, "fetch", lambda *a, **k: tmp_path)
    return engine


def test_chains_are_graded_strictly_and_capped_chains_fail(tmp_path, monkeypatch):
    replies = {p["problem"]: [Completion(f"so </think> the answer is \\boxed{{{2 * i}}}", 9, "stop"),
                              Completion(f"\\boxed{{{2 * i}}}", 9, "length"),  # right answer, but capped
                              Completion("\\boxed{-1}", 5, "stop"),
                              Completion("no answer at all", 4, "stop")]
               for i, p in enumerate(PROBLEMS)}
    scripted(monkeypatch, tmp_path, replies)
    job = solve_job(problems_uri(tmp_path), "file:///models/any", file_uri(tmp_path / "solve"), samples=4, maxTokens=9)
    solve_rate.run(job)
    rows = read_rows(job.output)
    assert [r["id"] for r in rows] == [p["id"] for p in PROBLEMS]
    row = rows[2]
    assert row["k"] == 4 and row["solve_rate"] == 0.25 and row["decided"] is None
    assert row["solve_rates"] == [{"cap": 9, "correct": 1, "rate": 0.25}]
    assert [s["correct"] for s in row["samples"]] == [True, False, False, False]
    assert [s["answer"] for s in row["samples"]] == ["4", "4", "-1", None]
    assert [s["finish_reason"] for s in row["samples"]] == ["stop", "length", "stop", "stop"]
    assert [s["tokens"] for s in row["samples"]] == [9, 9, 5, 4]
    assert (row["difficulty"], row["problem"]) == (PROBLEMS[2]["difficulty"], PROBLEMS[2]["problem"])
    metrics = json.loads((tmp_path / "solve" / "metrics.json").read_text())
    assert metrics["chains"] == 20 and metrics["correct"] == 5 and metrics["capped"] == 5
    assert metrics["solveRateBands"]["(0.2,0.6)"] == 5 and metrics["caps"] == [9]
    assert metrics["samplesDrawn"] == 20 and metrics["samplesSaved"] == 0


def test_several_caps_sample_once_at_the_largest_and_grade_at_each(tmp_path, monkeypatch):
    # chain tokens: 3 (right), 7 (right), 12 (right answer, but still going at the cap), 5 (wrong)
    replies = {p["problem"]: [Completion(f"\\boxed{{{2 * i}}}", 3, "stop"),
                              Completion(f"so \\boxed{{{2 * i}}}", 7, "stop"),
                              Completion(f"\\boxed{{{2 * i}}} and on", 20, "stop"),
                              Completion("\\boxed{-1}", 5, "stop")]
               for i, p in enumerate(PROBLEMS)}
    engine = scripted(monkeypatch, tmp_path, replies)
    job = solve_job(problems_uri(tmp_path), "file:///models/any", file_uri(tmp_path / "solve"), samples=4,
                    maxTokens=[12, 6])
    solve_rate.run(job)
    row = read_rows(job.output)[1]
    assert row["solve_rates"] == [{"cap": 6, "correct": 1, "rate": 0.25}, {"cap": 12, "correct": 2, "rate": 0.5}]
    assert row["solve_rate"] == 0.25  # the smallest cap's: what a single-cap reader expects
    assert [(s["tokens"], s["finish_reason"], s["correct"]) for s in row["samples"]] == [
        (3, "stop", True), (7, "stop", True), (12, "length", False), (5, "stop", False)]
    assert engine.calls == [8, 8, 4]  # one pass (k = 4 chains of each problem), in checkpoints of 2 problems
    metrics = json.loads((tmp_path / "solve" / "metrics.json").read_text())
    assert metrics["caps"] == [6, 12] and metrics["correctByCap"] == {"6": 5, "12": 10}
    assert metrics["solveRateBandsByCap"]["12"]["(0.2,0.6)"] == 5 and metrics["solveRateBands"]["(0,0.2]"] == 0


def test_difficulty_filter_samples_only_rated_problems_in_the_band(tmp_path, monkeypatch):
    replies = {p["problem"]: [Completion("\\boxed{0}", 3, "stop")] * 2 for p in PROBLEMS}
    engine = scripted(monkeypatch, tmp_path, replies)
    data = problems_uri(tmp_path)  # difficulties 3, 4, 5, 6 and one unrated (q4)
    job = solve_job(data, "file:///m", file_uri(tmp_path / "hard"), select={"difficulty": {"min": 5}})
    solve_rate.run(job)
    assert [r["id"] for r in read_rows(job.output)] == ["q2", "q3"] and sum(engine.calls) == 4
    metrics = json.loads((tmp_path / "hard" / "metrics.json").read_text())
    assert (metrics["selectedFrom"], metrics["notSelected"], metrics["problems"]) == (5, 3, 2)
    job = solve_job(data, "file:///m", file_uri(tmp_path / "hard-or-unrated"),
                    select={"difficulty": {"min": 5, "includeUnrated": True}})
    solve_rate.run(job)
    assert [r["id"] for r in read_rows(job.output)] == ["q2", "q3", "q4"]
    none = problems_uri(tmp_path, [{**p, "difficulty": None} for p in PROBLEMS])
    with pytest.raises(StageInputError, match="select.difficulty keeps none of 5 problems \\(5 unrated; "
                                              "includeUnrated: true selects those too\\)"):
        solve_rate.run(solve_job(none, "file:///m", file_uri(tmp_path / "none"), select={"difficulty": {"min": 5}}))
    with pytest.raises(ValueError, match="only `difficulty` applies"):
        solve_rate.run(solve_job(data, "file:///m", file_uri(tmp_path / "x"), select={"solveRate": {"above": 0.2}}))


def test_two_shards_make_the_unsharded_run_and_resume_after_a_kill(tmp_path, tiny_model_dir, monkeypatch):
    data, model = problems_uri(tmp_path), file_uri(tiny_model_dir)
    whole = solve_job(data, model, file_uri(tmp_path / "whole"))
    solve_rate.run(whole)

    sharded = solve_job(data, model, file_uri(tmp_path / "sharded"), shards=2)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    solve_rate.run(sharded)
    with pytest.raises(StageInputError, match="shard\\(s\\) 0-of-2 have no _MANIFEST.json"):
        read_dataset(sharded.output)
    assert not (tmp_path / "sharded" / "_MANIFEST.json").exists()

    # Shard 0 is killed after its first batch of 2 problems, then restarted.
    real_open_engine, engines = solve_rate.open_engine, []

    def recorded(fail_after_calls):
        def open_engine(*args, **kwargs):
            engines.append(Recorder(real_open_engine(*args, **kwargs), fail_after_calls))
            return engines[-1]
        return open_engine

    monkeypatch.setenv("JOB_COMPLETION_INDEX", "0")
    monkeypatch.setattr(solve_rate, "open_engine", recorded(fail_after_calls=1))
    with pytest.raises(RuntimeError, match="killed"):
        solve_rate.run(sharded)
    monkeypatch.setattr(solve_rate, "open_engine", recorded(fail_after_calls=None))
    solve_rate.run(sharded)
    assert engines[0].prompts == ["What is 0 + 0?"] * 2 + ["What is 2 + 2?"] * 2  # k = 2 chains each
    assert engines[1].prompts == ["What is 4 + 4?"] * 2  # only what the killed attempt had not finished

    assert read_rows(sharded.output) == read_rows(whole.output)
    assert (tmp_path / "sharded" / "_MANIFEST.json").exists()
    combined = json.loads((tmp_path / "sharded" / "metrics.json").read_text())
    assert combined["shards"] == 2 and combined["problems"] == 5 and combined["chains"] == 10
    for row in read_rows(whole.output):
        assert row["k"] == 2 and len(row["samples"]) == 2
        for sample in row["samples"]:
            assert sample["tokens"] <= 6
            assert sample["correct"] is False or sample["finish_reason"] == "stop"


def test_bad_inputs_are_refused(tmp_path, monkeypatch):
    no_answers = problems_uri(tmp_path, [{**p, "answer": None} for p in PROBLEMS])
    with pytest.raises(StageInputError, match="no problem has a reference answer"):
        solve_rate.run(solve_job(no_answers, "file:///m", file_uri(tmp_path / "out")))
    with pytest.raises(StageInputError, match="has no _MANIFEST.json"):
        solve_rate.run(solve_job(file_uri(tmp_path / "nothing"), "file:///m", file_uri(tmp_path / "out")))
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    with pytest.raises(StageInputError, match="JOB_COMPLETION_INDEX"):
        solve_rate.run(solve_job(problems_uri(tmp_path), "file:///m", file_uri(tmp_path / "out"), shards=2))


@pytest.mark.slow
def test_cli_samples_with_the_tiny_model(tmp_path, tiny_model_dir):
    data = problems_uri(tmp_path, PROBLEMS[:2])
    job = solve_job(data, file_uri(tiny_model_dir), "file://./runs/solve")
    result = run_cli(job, tmp_path)
    assert result.returncode == 0, result.stderr
    rows = read_rows(file_uri(tmp_path / "runs" / "solve"))
    assert [r["id"] for r in rows] == ["q0", "q1"] and all(len(r["samples"]) == 2 for r in rows)
