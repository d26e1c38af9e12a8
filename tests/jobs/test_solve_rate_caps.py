"""solve-rate on the tiny model (transformers engine, CPU, fixed seed):

- one pass at the largest cap, graded at each cap, says exactly what a separate run at the smaller
  cap says: the capped run's chains are the long run's chains cut at the cap;
- adaptive sampling draws the same chains as a full run (chain j of a problem has its own seed), so
  problems sampled to the end carry identical rows, stopped ones a prefix of them, and every curated
  set is identical.

The tiny model is random: it never writes a right answer, and rarely ends a chain. So this copy of it
also ends a chain at any of ~40 of its 1,024 tokens (chains then end anywhere from a few tokens to
past the cap), and a grader double calls a finished chain right unless its text length is a multiple
of 8 - a verdict that depends on the text alone, as the real grader's does.
"""

from __future__ import annotations

import json
import shutil

import pytest

import fathom_jobs.grading
from fathom_jobs.datasets import ANNOTATED, read_rows, read_shipped, write_dataset
from fathom_jobs.inputs import store_for
from fathom_jobs.stages import curate, solve_rate
from tests.support.jobs_helpers import file_uri, make_job

pytestmark = pytest.mark.slow
CAPS = [12, 40]
K = 4
BAND = {"above": 0.2, "below": 0.6, "cap": 40}  # 1 or 2 of 4 right within 40 tokens


class TextGrader:
    def __init__(self, *_args, **_kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def extract(self, text):
        return str(len(text))

    def grade_batch(self, pairs):
        return [len(text) % 8 != 0 for text, _gold in pairs]


@pytest.fixture(scope="module")
def ending_model(tiny_model_dir, tmp_path_factory):
    model = tmp_path_factory.mktemp("tiny-ending") / "model"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "generation_config.json").read_text())
    config["eos_token_id"] = [config["eos_token_id"], *range(2, 1024, 25)]  # the pad token (2) ends a chain too
    (model / "generation_config.json").write_text(json.dumps(config))
    return model


@pytest.fixture(scope="module")
def runs(ending_model, tmp_path_factory):
    """The stage run three ways on 12 problems of the tiny recipe's corpus."""
    root = tmp_path_factory.mktemp("caps")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FATHOM_CACHE_DIR", str(root / "cache"))
        mp.delenv("JOB_COMPLETION_INDEX", raising=False)
        mp.setattr(fathom_jobs.grading, "Grader", TextGrader)
        problems = [{**p, "id": f"g{i}", "difficulty": None, "difficulty_raw": None}
                    for i, p in enumerate(read_shipped("gsm8k-sample")[:12])]
        data = file_uri(root / "problems")
        write_dataset(store_for(data), problems, ANNOTATED, fingerprint="problems")

        def run(name, **params):
            job = make_job("solve-rate", {"data": data, "model": file_uri(ending_model), "samples": K,
                                          "temperature": 1.0, "engine": "transformers", "seed": 11, **params},
                           file_uri(root / name))
            solve_rate.run(job)
            return job.output, read_rows(job.output), json.loads((root / name / "metrics.json").read_text())

        yield {"full": run("full", maxTokens=CAPS, stopOutside=[]),
               "at12": run("at12", maxTokens=12),
               "adaptive": run("adaptive", maxTokens=CAPS, stopOutside=[BAND], samplesPerRound=1),
               "root": root}


def test_one_long_pass_graded_at_each_cap_equals_separate_capped_runs(runs):
    _, full, _ = runs["full"]
    _, at12, _ = runs["at12"]
    kinds = {"within 12": 0, "within 40": 0, "over 40": 0}
    for long_row, short_row in zip(full, at12, strict=True):
        assert long_row["id"] == short_row["id"]
        for long, short in zip(long_row["samples"], short_row["samples"], strict=True):
            if long["finish_reason"] == "stop" and long["tokens"] <= 12:
                kinds["within 12"] += 1
                assert short == long  # the same chain, ended within both caps
            else:
                kinds["within 40" if long["finish_reason"] == "stop" else "over 40"] += 1
                assert short["finish_reason"] == "length" and short["correct"] is False
                # the first 12 tokens of the long chain (a character they cut in two decodes as U+FFFD)
                assert long["text"].startswith(short["text"].rstrip("\ufffd"))
            # the verdict at cap 12 read off the long pass is the capped run's verdict
            assert (long["correct"] and long["tokens"] <= 12) == short["correct"]
        assert long_row["solve_rates"][0] == {**short_row["solve_rates"][0]}  # cap 12: correct count and rate
        assert long_row["solve_rate"] == short_row["solve_rate"]  # the smallest cap's
    assert all(kinds.values()), kinds  # chains ended below, between and beyond the caps
    rates = [[e["rate"] for e in r["solve_rates"]] for r in full]
    assert any(low != high for low, high in rates) and any(0 < high < 1 for _, high in rates)


def test_adaptive_sampling_draws_the_full_runs_chains_and_curates_the_same_sets(runs):
    full_uri, full, full_metrics = runs["full"]
    adaptive_uri, adaptive, metrics = runs["adaptive"]
    stopped = 0
    for f, a in zip(full, adaptive, strict=True):
        if a["decided"] == "outside":
            stopped += 1
            n = len(a["samples"])
            assert a["samples"] == f["samples"][:n] and n < K and a["solve_rate"] is None
            assert sum(s["correct"] for s in a["samples"]) >= 3  # 3 right of 4: outside (0.2, 0.6) whatever comes
            assert not 0.2 < f["solve_rates"][1]["rate"] < 0.6  # and the full run agrees
        else:
            assert a == f  # sampled to the end: the very same row
    assert stopped > 0
    assert metrics["samplesDrawn"] + metrics["samplesSaved"] == K * len(full) == full_metrics["samplesDrawn"]
    assert metrics["samplesSaved"] > 0 and metrics["stoppedOutside"] == stopped and metrics["tokensSaved"] > 0
    print(f"tiny model: adaptive sampling saved {metrics['samplesSaved']} of {K * len(full)} chains "
          f"({metrics['samplesSavedFraction']:.1%}), {stopped} of {len(full)} problems stopped")
    root = runs["root"]
    for keep in ("shortest-correct-chain", "all-correct-chains", "prompt"):
        outputs = []
        for name, data in (("full", full_uri), ("adaptive", adaptive_uri)):
            job = make_job("curate", {"data": data, "select": {"solveRate": BAND}, "keep": keep,
                                      "order": "easy-to-hard"}, file_uri(root / f"curate-{keep}-{name}"))
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("FATHOM_CACHE_DIR", str(root / "cache"))
                curate.run(job)
            outputs.append(read_rows(job.output))
        assert outputs[0] == outputs[1] and outputs[0], keep
