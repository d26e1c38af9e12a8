"""The cost forecast of whole recipes: the shipped examples, hints, measured values, calibration."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from fathom_operator.api.hints import HINTS, EstimateHints, ModelInfo
from fathom_operator.estimate import render_table, to_dict
from fathom_operator.forecast import forecast
from fathom_operator.hardware import parse_calibration
from fathom_operator.validate import RecipeInvalid, parse_recipe, validate_document

EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples"
GPU_TYPES = {"solve-rate", "grpo", "sft", "eval"}
TINY_MODEL = {"layers": 2, "hiddenSize": 64, "attentionHeads": 4, "kvHeads": 2, "vocabSize": 1024, "intermediateSize": 128}


def doc(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())


def recipe(name: str, edit=None):
    document = doc(name)
    if edit:
        edit(document)
    return validate_document(document)


def row(fc, name: str):
    return next(s for s in fc.stages if s.name == name)


@pytest.mark.parametrize("name", ["fathom-r1-14b", "fathom-r1-14b-rs"])
def test_14b_examples_forecast(name):
    fc = forecast(recipe(name))
    assert [s.name for s in fc.stages] == [s["name"] for s in doc(name)["spec"]["stages"]]
    for stage in fc.stages:
        assert stage.basis, stage.name
        if stage.type in GPU_TYPES:
            assert stage.gpu_hours > 0 and stage.usd > 0 and stage.wall_seconds > 0, stage.name
            assert stage.usd == pytest.approx(stage.gpu_hours * 2.83, abs=0.05)  # the h100 pool's price
        else:
            assert stage.gpu_hours == 0 and stage.usd >= 0, stage.name
    assert fc.gpu_hours == pytest.approx(sum(s.gpu_hours for s in fc.stages), abs=1e-6)
    assert fc.usd == pytest.approx(sum(s.usd for s in fc.stages), abs=1e-6)
    assert "R1-Distill-Qwen-14B" in fc.model_basis  # the shape's source is stated
    text = render_table(fc)
    total = next(line for line in text.splitlines() if line.startswith("TOTAL"))
    assert f"{fc.gpu_hours:,.2f}" in total and "budget $2,500.00" in total


def trl_colocate_defaults(document: dict) -> None:
    """TRL 1.16's own colocate settings, which the RS example's GRPO stage used to inherit."""
    grpo = next(s for s in document["spec"]["stages"] if s["type"] == "grpo")
    grpo.update(vllmGpuMemoryUtilization=0.3, vllmTensorParallelSize=1, vllmEnableSleepMode=False)


def rs_with_trl_defaults():
    document = doc("fathom-r1-14b-rs")
    trl_colocate_defaults(document)
    return parse_recipe(document)  # schema only: validation would reject it


def test_rs_example_flags_the_colocated_grpo():
    fc = forecast(rs_with_trl_defaults())
    assert [p.path for p in fc.problems] == ["spec.stages[5].vllmGpuMemoryUtilization"]
    assert "24.0 GB (0.3 × 80 GB) for 29.5 GB of weights" in fc.problems[0].problem.message
    assert any("does not fit as configured" in b for b in row(fc, "grpo-compress").basis)
    assert not forecast(recipe("fathom-r1-14b")).problems
    assert not forecast(recipe("fathom-r1-14b-rs")).problems  # the stage's own defaults fit


def test_validation_rejects_trls_colocate_defaults_until_the_knobs_are_set():
    document = doc("fathom-r1-14b-rs")
    trl_colocate_defaults(document)
    with pytest.raises(RecipeInvalid) as err:
        validate_document(document)
    assert [str(e) for e in err.value.errors] == [
        "spec.stages[5].vllmGpuMemoryUtilization: GRPO colocated vLLM gets 24.0 GB (0.3 × 80 GB) for 29.5 GB of "
        "weights + 1.2 GB KV cache of one 6,200-token sequence + 1.5 GB overhead; set vllmGpuMemoryUtilization "
        "≥ 0.45 or vllmTensorParallelSize: 2"]
    for knob in ({"vllmGpuMemoryUtilization": 0.45}, {"vllmTensorParallelSize": 2}):
        fixed = copy.deepcopy(document)
        next(s for s in fixed["spec"]["stages"] if s["type"] == "grpo").update(knob)
        assert validate_document(fixed).metadata.name == "fathom-r1-14b-rs", knob


def test_sft_gpu_hours_by_hand():
    fc = forecast(recipe("fathom-r1-14b"), hints={"curriculum-set": {"problems": 1000, "meanTokens": 4000}})
    n = 13_990_625_280  # matmul parameters of the 14B shape
    flops = 1000 * 4000 * 3 * (6 * n + 12 * 48 * 5120 * 4000)  # 3 passes, T = 4,000
    gpu_seconds = flops / (989.4e12 * 0.3555)  # H100 dense BF16 peak x the MPT-13B 16k MFU
    weights = 2 * 14_770_033_664
    wall = 120 + weights / 1.25e9 + weights / 1.25e9 + gpu_seconds / 8  # start, download, upload, 8 GPUs
    sft = row(fc, "sft-curriculum")
    assert sft.gpu_hours == pytest.approx(8 * wall / 3600, abs=0.01)
    assert sft.basis[0] == "chains 1,000 (hinted)"


def test_tiny_cpu_example():
    fc = forecast(recipe("tiny-cpu"))
    assert all(s.gpu_hours == 0 and s.gpus_per_pod == 0 for s in fc.stages)
    assert 0 < fc.usd < 1  # the recipe's budget
    assert any("no known shape" in w for w in fc.warnings)
    shaped = forecast(recipe("tiny-cpu"), model=TINY_MODEL)
    assert not any("no known shape" in w for w in shaped.warnings)
    assert row(shaped, "corpus").basis[0] == "problems 64 maxProblems"
    # 6 chains (10% of 64, assumed) x 256-token packed blocks x 2 passes x 3 epochs
    assert row(shaped, "sft-curriculum").basis[1].startswith("9,830 tokens = chains x 256 tokens x 2 passes x 3 epochs")
    assert "TOTAL" in render_table(shaped)


def test_counts_flow_from_hints_and_measured_values_replace_them():
    base = forecast(recipe("fathom-r1-14b"))
    hinted = forecast(recipe("fathom-r1-14b"), hints={"corpus": {"problems": 50_000}})
    assert row(hinted, "solve").gpu_hours < row(base, "solve").gpu_hours
    assert row(hinted, "solve").basis[0] == "problems 50,000 (corpus hinted)"
    assert row(hinted, "curriculum-set").basis[-3].startswith("rows 2,500 (corpus hinted x keepFraction 0.05")
    both = forecast(recipe("fathom-r1-14b"), hints={"corpus": {"problems": 50_000}},
                    measured={"corpus": {"problems": 20_000}})
    assert row(both, "corpus").basis[0] == "problems 20,000 measured"
    assert row(both, "solve").gpu_hours < row(hinted, "solve").gpu_hours


def test_sampling_only_what_the_difficulty_filter_keeps_and_fp8_kv_are_credited():
    def solve(edit):
        def change(document):
            edit(next(s for s in document["spec"]["stages"] if s["name"] == "solve"))
        return forecast(recipe("fathom-r1-14b", change))

    shipped = forecast(recipe("fathom-r1-14b"))  # difficulty >= 5 first, fp8 KV cache
    unfiltered = solve(lambda s: s.pop("select"))
    bf16_kv = solve(lambda s: s.update(kvCacheDtype="auto"))
    # Ratings assumed even over 1-10: difficulty 5-10 keeps 6 of 10 problems.
    assert row(shipped, "solve").gpu_hours == pytest.approx(row(unfiltered, "solve").gpu_hours * 0.6, rel=0.01)
    assert "problems 60,000 after select.difficulty [5, 10]" in "\n".join(row(shipped, "solve").basis)
    # The seeds' set sizes are fractions of the whole corpus, filtered before sampling or not.
    assert row(shipped, "curriculum-set").basis[-3].startswith("rows 5,000 (corpus assumed x keepFraction 0.05")
    # An fp8 cache holds twice the sequences and each decode step reads half the cache bytes.
    assert 1.5 < row(bf16_kv, "solve").gpu_hours / row(shipped, "solve").gpu_hours < 2.5
    assert "KV cache fp8" in "\n".join(row(shipped, "solve").basis)
    hinted = forecast(recipe("fathom-r1-14b"), hints={"solve": {"problems": 20_000}})
    assert "problems 20,000 (hinted)" in row(hinted, "solve").basis[0]  # a hint is the filtered count itself


def test_measured_gpu_hours_and_mean_tokens():
    fc = forecast(recipe("fathom-r1-14b-rs"), measured={"solve": {"gpuHours": 123.45, "meanTokens": 2500}})
    solve = row(fc, "solve")
    assert (solve.gpu_hours, solve.usd) == (123.45, pytest.approx(123.45 * 2.83, abs=0.01))
    assert solve.basis[0] == "GPU-hours 123.45 measured"
    # GRPO samples the same model (base): the mean measured at 16,384 tokens, refitted to GRPO's 6,000-token cap,
    # replaces the prior.
    grpo = row(fc, "grpo-compress")
    assert any("from solve's measured 2,500 at cap 16,384" in b for b in grpo.basis)
    assert grpo.gpu_hours < row(forecast(recipe("fathom-r1-14b-rs")), "grpo-compress").gpu_hours


@pytest.mark.parametrize(("hints", "loc"), [
    ({"corpus": {"problems": -5}}, ("corpus", "problems")),
    ({"corpus": {"problems": "lots"}}, ("corpus", "problems")),
    ({"rl-set": {"keepFraction": 1.5}}, ("rl-set", "keepFraction")),
    ({"solve": {"meanTokens": 0}}, ("solve", "meanTokens")),
    ({"corpus": {"problem": 5}}, ("corpus", "problem")),
])
def test_bad_hints_are_rejected_with_their_path(hints, loc):
    with pytest.raises(ValidationError) as caught:
        forecast(recipe("fathom-r1-14b"), hints=hints)
    assert caught.value.errors()[0]["loc"] == loc
    with pytest.raises(ValidationError):
        HINTS.validate_python(hints)


def test_hint_models():
    assert EstimateHints.model_validate({"keepFraction": 0.2}).keep_fraction == 0.2
    with pytest.raises(ValidationError) as caught:
        ModelInfo.model_validate({**TINY_MODEL, "layers": 0})
    assert caught.value.errors()[0]["loc"] == ("layers",)


def test_unknown_gpu_product_is_a_warning():
    def z900(document):
        document["spec"]["nodePools"]["h100"]["nodeSelector"]["nvidia.com/gpu.product"] = "NVIDIA-Z900"

    fc = forecast(recipe("fathom-r1-14b", z900))
    assert any("unknown GPU product 'NVIDIA-Z900'" in w and "assuming NVIDIA-H100-80GB-HBM3" in w for w in fc.warnings)
    assert row(fc, "solve").gpu_hours == row(forecast(recipe("fathom-r1-14b")), "solve").gpu_hours


def test_faster_gpu_forecasts_fewer_gpu_hours():
    def h200(document):
        document["spec"]["nodePools"]["h100"]["nodeSelector"]["nvidia.com/gpu.product"] = "NVIDIA-H200"

    fast, slow = forecast(recipe("fathom-r1-14b", h200)), forecast(recipe("fathom-r1-14b"))
    assert row(fast, "solve").gpu_hours < row(slow, "solve").gpu_hours
    assert not any("unknown GPU" in w for w in fast.warnings)


def test_calibration_replaces_cited_efficiencies_for_its_gpu_only():
    doc_ = {"gpu": "NVIDIA-H100-80GB-HBM3", "measured": "2026-12-02", "sft": {"mfu": 0.5}}
    plain = forecast(recipe("fathom-r1-14b"))
    calibrated = forecast(recipe("fathom-r1-14b"), calibration=parse_calibration(doc_))
    assert row(calibrated, "sft-shortest").gpu_hours < row(plain, "sft-shortest").gpu_hours
    assert any("MFU 0.50" in b and "measured" in b for b in row(calibrated, "sft-shortest").basis)
    other = parse_calibration({**doc_, "gpu": "NVIDIA-A100-SXM4-80GB"})
    assert row(forecast(recipe("fathom-r1-14b"), calibration=other), "sft-shortest") == row(plain, "sft-shortest")
    decode = parse_calibration({**doc_, "decode": {"tokensPerSecondPerGpu": {"6000": 1000.0}}})
    slow = forecast(recipe("fathom-r1-14b"), calibration=decode)
    assert row(slow, "solve").gpu_hours > row(plain, "solve").gpu_hours


def test_budget_and_remaining():
    fc = forecast(recipe("fathom-r1-14b"))
    assert fc.budget_usd == 2500
    assert fc.remaining_usd(100.0) == round(fc.usd - 100.0, 2)
    assert fc.remaining_usd(fc.usd + 1) == 0.0
    line = next(x for x in render_table(fc).splitlines() if x.startswith("TOTAL"))
    assert ("OVER budget" in line) == (fc.usd > 2500)


def test_json_form_and_determinism():
    first, second = forecast(rs_with_trl_defaults()), forecast(rs_with_trl_defaults())
    assert first == second
    data = to_dict(first)
    assert json.loads(json.dumps(data)) == data
    assert set(data) == {"recipe", "stages", "total", "budgetUSD", "warnings", "problems"}
    assert set(data["stages"][0]) >= {"name", "gpuHours", "usd", "wallSeconds", "basis", "gpusPerPod"}
    assert data["total"]["usd"] == first.usd
    assert data["problems"][0]["path"] == "spec.stages[5].vllmGpuMemoryUtilization"


def test_the_recipe_is_not_modified():
    parsed = recipe("fathom-r1-14b")
    before = copy.deepcopy(parsed.model_dump())
    forecast(parsed, hints={"corpus": {"problems": 10}})
    assert parsed.model_dump() == before
