"""Adaptive sampling in solve-rate: when a problem may stop, and that stopping early changes no curated
set - at the 14B recipe's scale (k = 8, caps 6,000 and 16,384, the presets' bands) on the tiny recipe's
problems, with a simulated model (chains are far too long for the tiny model on a CPU).

The simulated model behaves like an engine where it matters here: a chain depends only on its
conversation and its seed; its length is exponential with mean 8,000 tokens (the forecast's prior,
fathom_operator.hardware.REASONING_MEAN_TOKENS), cut at the cap; it is right with a per-problem
probability spread evenly over [0, 1]. The same run on the tiny model itself (transformers engine):
tests/jobs/test_solve_rate_caps.py.
"""

from __future__ import annotations

import hashlib
import json
import random

import pytest

from fathom_jobs.datasets import ANNOTATED, read_rows, read_shipped, write_dataset
from fathom_jobs.engines import Completion
from fathom_jobs.errors import StageInputError
from fathom_jobs.inputs import store_for
from fathom_jobs.specs import CurateParams, SolveRateBand, SolveRateParams
from fathom_jobs.stages import curate, solve_rate
from tests.support.jobs_helpers import file_uri, make_job

K = 8
CAPS = [6000, 16384]
# What the operator passes to the 14B-RS recipe's solve-rate stage: the bands of the curate stages reading it.
READERS = ("curriculum", "rl-compression", "shortest-chains")
STOP_OUTSIDE = [CurateParams.model_validate({"data": "d", "preset": name}).effective().select.solve_rate
                for name in READERS]


def unit(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") / 2**32


class SimulatedModel:
    def __init__(self, answers: dict[str, str]):
        self.answers, self.chains = answers, 0

    def generate(self, conversations, sampling, seeds=None):
        out = []
        for conversation, seed in zip(conversations, seeds, strict=True):
            problem = conversation[-1]["content"]
            rng = random.Random(seed)
            length, right = 1 + int(rng.expovariate(1 / 8000)), rng.random() < unit(problem)
            answer = self.answers[problem] if right else "no"
            if length > sampling.max_tokens:
                out.append([Completion(f"thinking {length}", sampling.max_tokens, "length")])
            else:
                out.append([Completion(f"thinking {length}</think> \\boxed{{{answer}}}", length, "stop")])
            self.chains += 1
        return out

    def close(self):
        pass


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The tiny recipe's sources (aime24, amc23, gsm8k-sample) with judge ratings 1-10."""
    root = tmp_path_factory.mktemp("adaptive")
    problems = [{"id": f"{name}-{i}", "problem": p["problem"], "answer": str(p["answer"]), "solution": p.get("solution"),
                 "source": name, "difficulty": 1 + int(10 * unit("rating " + p["problem"])), "difficulty_raw": None}
                for name in ("aime24", "amc23", "gsm8k-sample") for i, p in enumerate(read_shipped(name))]
    data = file_uri(root / "problems")
    write_dataset(store_for(data), problems, ANNOTATED, fingerprint="problems")
    return root, data, {p["problem"]: p["answer"] for p in problems}


@pytest.fixture(scope="module")
def runs(corpus):
    root, data, answers = corpus
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FATHOM_CACHE_DIR", str(root / "cache"))
        mp.delenv("JOB_COMPLETION_INDEX", raising=False)
        mp.setattr(solve_rate, "fetch", lambda *a, **k: root)
        for name, stop in (("full", []), ("adaptive", [b.model_dump(by_alias=True, exclude_none=True)
                                                       for b in STOP_OUTSIDE])):
            model = SimulatedModel(answers)
            mp.setattr(solve_rate, "open_engine", lambda *a, model=model, **k: model)
            job = make_job("solve-rate", {"data": data, "model": "file:///models/simulated", "samples": K,
                                          "maxTokens": CAPS, "engine": "transformers",
                                          "stopOutside": stop}, file_uri(root / name))
            solve_rate.run(job)
            out[name] = (job.output, read_rows(job.output), json.loads((root / name / "metrics.json").read_text()),
                         model.chains)
    return out


def curated(root, data, name, **params):
    job = make_job("curate", {"data": data, **params}, file_uri(root / name))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FATHOM_CACHE_DIR", str(root / "cache"))
        curate.run(job)
    return read_rows(job.output)


def test_a_problem_stops_only_when_no_outcome_of_its_remaining_chains_lands_in_a_band():
    band = SolveRateBand(above=0.2, below=0.6, cap=16384)  # k = 8: 2, 3 or 4 right
    chain = {"correct": True, "tokens": 100}
    wrong = {"correct": False, "tokens": 100}
    assert not solve_rate.decided_outside([chain] * 4, K, [band])  # 4 of 8 is still 0.5
    assert solve_rate.decided_outside([chain] * 5, K, [band])  # at least 5 of 8 = 0.625
    assert not solve_rate.decided_outside([wrong] * 6, K, [band])  # 2 more right would make 0.25
    assert solve_rate.decided_outside([wrong] * 7, K, [band])  # at most 1 of 8
    assert not solve_rate.decided_outside([wrong] * 8, K, [band])  # all drawn: a final rate, not a stop
    # every band must be out of reach, each at its own cap: a 9,000-token right chain is wrong at 6,000
    long_right = {"correct": True, "tokens": 9000}
    low_at_6k = SolveRateBand(above=0.0, at_most=0.5, cap=6000)
    assert not solve_rate.decided_outside([long_right] * 5, K, [band, low_at_6k])
    assert solve_rate.decided_outside([chain] * 5, K, [band, low_at_6k])


def test_bands_that_hold_every_rate_mean_one_pass_and_caps_must_be_sampled():
    params = SolveRateParams.model_validate({"data": "d", "maxTokens": CAPS, "samples": K,
                                             "stopOutside": [{"atLeast": 0.0, "atMost": 1.0}, {"above": 0.5}]})
    assert solve_rate.stop_bands(params) == []
    params = SolveRateParams.model_validate({"data": "d", "maxTokens": CAPS, "stopOutside": [{"above": 0.5}]})
    assert [b.cap for b in solve_rate.stop_bands(params)] == [16384]  # no cap: the largest
    params = SolveRateParams.model_validate({"data": "d", "maxTokens": CAPS, "stopOutside": [{"above": 0.5,
                                                                                              "cap": 8000}]})
    with pytest.raises(StageInputError, match="stopOutside\\[0\\].cap 8000 is not one of maxTokens \\[6000, 16384\\]"):
        solve_rate.stop_bands(params)


def test_adaptive_sampling_curates_exactly_the_full_runs_sets_and_says_what_it_saved(runs, corpus):
    root = corpus[0]
    full_uri, full, full_metrics, full_chains = runs["full"]
    adaptive_uri, adaptive, metrics, chains = runs["adaptive"]
    assert full_chains == K * len(full) == full_metrics["samplesDrawn"] and full_metrics["samplesSaved"] == 0
    stopped = [a for a in adaptive if a["decided"] == "outside"]
    assert chains == metrics["samplesDrawn"] == K * len(full) - metrics["samplesSaved"]
    assert metrics["stoppedOutside"] == len(stopped) > 0 and metrics["tokensSaved"] > 0
    assert metrics["samplesSavedFraction"] == pytest.approx(metrics["samplesSaved"] / (K * len(full)))
    for f, a in zip(full, adaptive, strict=True):
        if a["decided"] is None:
            assert a == f
        else:  # its chains so far are the full run's first ones; its full-run rates are in no band
            assert a["samples"] == f["samples"][:len(a["samples"])]
            assert not any(b.contains(next(e["rate"] for e in f["solve_rates"] if e["cap"] == b.cap))
                           for b in STOP_OUTSIDE)
    for preset in READERS:
        assert curated(root, adaptive_uri, f"a-{preset}", preset=preset) == \
            curated(root, full_uri, f"f-{preset}", preset=preset), preset
    # the saving measured on these problems (reported in the closing note of the change that added it)
    print(f"adaptive sampling saved {metrics['samplesSaved']} of {K * len(full)} chains "
          f"({metrics['samplesSavedFraction']:.1%}) and ~{metrics['tokensSaved']:,} tokens; "
          f"{len(stopped)} of {len(full)} problems stopped")


def test_a_curate_band_solve_rate_was_not_given_is_refused_when_a_stopped_problem_could_be_in_it(runs, corpus):
    root = corpus[0]
    # curriculum-wide (0.2 < s < 0.7) was not among the bands: a problem stopped at 5 right of 6 could end at 5/8
    with pytest.raises(StageInputError, match="were stopped early by the solve-rate stage but could have ended "
                                              "in this stage's solveRate band"):
        curated(root, runs["adaptive"][0], "wide", preset="curriculum-wide")
    assert curated(root, runs["full"][0], "wide-full", preset="curriculum-wide")
