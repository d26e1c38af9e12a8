"""Adaptive sampling, the operator's side: a solve-rate stage is given the solveRate bands of the curate
stages reading it (fathom_operator.bands), in a canonical form that stops exactly what the bands stop,
and only edits that change them rerun the sampling. Also: the forecast of a stage with several caps."""

from __future__ import annotations

import itertools
import json

import pytest

from fathom_jobs import specs
from fathom_jobs.errors import StageInputError
from fathom_jobs.stages import solve_rate
from fathom_operator import bands
from fathom_operator.fingerprints import stage_fingerprints
from fathom_operator.forecast import forecast
from fathom_operator.render import render_stage
from fathom_operator.validate import validate_document
from tests.support.helpers import example, stage_index


def stage(doc, name):
    return doc["spec"]["stages"][stage_index(doc, name)]


def job_params(doc, name):
    recipe = validate_document(doc)
    job = render_stage(recipe, name, 0)[0]
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    return json.loads(next(e["value"] for e in env if e["name"] == "FATHOM_JOB_SPEC"))["params"]


def test_the_solve_stage_is_given_the_bands_of_every_curate_stage_reading_it():
    # RS: curriculum 0.2 < s < 0.6 and shortest chains 0.1 <= s <= 0.4 at 16,384; RL 0 < s <= 0.5 at 6,000; k = 8
    params = job_params(example("fathom-r1-14b-rs.yaml"), "solve")
    assert params["stopOutside"] == [{"atLeast": 0.125, "atMost": 0.5, "cap": 6000},
                                     {"atLeast": 0.125, "atMost": 0.5, "cap": 16384}]
    assert params["maxTokens"] == [6000, 16384] and params["select"]["difficulty"]["min"] == 5
    # presets count like written-out bands: the 14B example with its curate stages back on their presets
    doc = example("fathom-r1-14b.yaml")
    for name in ("curriculum-set", "shortest-set"):
        stage(doc, name).pop("select")
    assert job_params(doc, "solve")["stopOutside"] == [{"atLeast": 0.125, "atMost": 0.5, "cap": 16384}]


def test_no_early_stop_when_a_reader_may_take_any_rate_or_nothing_reads_the_stage_or_the_recipe_says_so():
    doc = example("fathom-r1-14b.yaml")
    stage(doc, "shortest-set")["select"] = {"difficulty": {"min": 3}}  # no solveRate band: every rate
    assert job_params(doc, "solve")["stopOutside"] == []
    assert job_params(example("tiny-cpu.yaml"), "solve")["stopOutside"] == []  # a band 0 <= s <= 1
    doc = example("fathom-r1-14b.yaml")
    stage(doc, "solve")["stopOutside"] = []
    assert job_params(doc, "solve")["stopOutside"] == []
    doc = example("fathom-r1-14b.yaml")
    doc["spec"]["stages"] = [s for s in doc["spec"]["stages"] if s["name"] in ("corpus", "difficulty", "solve")]
    assert job_params(doc, "solve")["stopOutside"] == []


@pytest.mark.parametrize("k", [4, 8])
def test_the_canonical_bands_stop_exactly_what_the_readers_bands_stop(k):
    caps = [6000, 16384]
    readers = [{"above": 0.2, "below": 0.6, "cap": 16384}, {"atLeast": 0.1, "atMost": 0.4, "cap": 16384},
               {"above": 0.0, "atMost": 0.5, "cap": 6000}, {"above": 0.55, "below": 0.6, "cap": 6000}]
    raw = [specs.SolveRateBand.model_validate(b) for b in readers]
    canonical = [specs.SolveRateBand.model_validate(b) for b in bands.canonical(readers, k, caps)]
    assert len(canonical) < len(raw)
    # every state a problem can be in: drawn chains, right ones within 6,000 and within 16,384 tokens
    for drawn in range(k):
        for right_16k, right_6k in itertools.product(range(drawn + 1), repeat=2):
            if right_6k > right_16k:
                continue
            chains = ([{"correct": True, "tokens": 100}] * right_6k + [{"correct": True, "tokens": 9000}] *
                      (right_16k - right_6k) + [{"correct": False, "tokens": 100}] * (drawn - right_16k))
            assert solve_rate.decided_outside(chains, k, raw) == solve_rate.decided_outside(chains, k, canonical)


def test_a_cap_the_stage_does_not_sample_reaches_its_job_which_refuses_it_before_sampling():
    doc = example("fathom-r1-14b.yaml")
    stage(doc, "shortest-set")["select"] = {"solveRate": {"atLeast": 0.1, "atMost": 0.4, "cap": 8000}}
    params = job_params(doc, "solve")
    assert {"atLeast": 0.1, "atMost": 0.4, "cap": 8000} in params["stopOutside"]
    with pytest.raises(StageInputError, match="stopOutside\\[1\\].cap 8000 is not one of maxTokens \\[6000, 16384\\]"):
        solve_rate.stop_bands(specs.SolveRateParams.model_validate(params))


def fingerprints(edit=None):
    doc = example("fathom-r1-14b.yaml")
    if edit:
        edit(doc)
    return stage_fingerprints(validate_document(doc), "ml")


def test_only_curate_edits_that_change_what_may_stop_rerun_the_sampling():
    before = fingerprints()

    def changed(edit):
        after = fingerprints(edit)
        return {name for name in before if before[name] != after[name]}

    downstream_of_curriculum = {"curriculum-set", "sft-curriculum", "fathom-r1-14b", "eval"}
    # order, maxChainTokens, a band edit inside the union (0.25 < s < 0.6: still 1..4 of 8 with shortest chains)
    assert changed(lambda d: stage(d, "curriculum-set").update(order="hard-to-easy")) == downstream_of_curriculum
    assert changed(lambda d: stage(d, "curriculum-set").update(maxChainTokens=12000)) == downstream_of_curriculum
    narrower = {"difficulty": {"min": 5}, "solveRate": {"above": 0.25, "below": 0.6, "cap": 16384}}
    assert changed(lambda d: stage(d, "curriculum-set").update(select=narrower)) == downstream_of_curriculum
    # a wider band (0.2 < s < 0.7 takes 5 of 8): the sampling and everything after it rerun
    wider = {"difficulty": {"min": 5}, "solveRate": {"above": 0.2, "below": 0.7, "cap": 16384}}
    assert changed(lambda d: stage(d, "curriculum-set").update(select=wider)) == set(before) - {"corpus", "difficulty"}


def test_the_forecast_samples_a_stage_with_several_caps_once_at_the_largest():
    several = forecast(validate_document(example("fathom-r1-14b.yaml")))
    doc = example("fathom-r1-14b.yaml")
    stage(doc, "solve")["maxTokens"] = 16384
    one = forecast(validate_document(doc))
    row = next(s for s in several.stages if s.name == "solve")
    assert row == next(s for s in one.stages if s.name == "solve")
    assert any("E[min(L, 16,384)]" in line for line in row.basis)
