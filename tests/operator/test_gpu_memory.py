"""The GPU memory / feasibility model and the hardware table, checked against hand-computed numbers."""

from __future__ import annotations

import json

import pytest

from fathom_operator import gpumemory as gm
from fathom_operator.hardware import (
    GPUS,
    CalibrationError,
    capped_mean,
    expected_max,
    fit_uncapped_mean,
    gpu_for_product,
    load_calibration,
    parse_calibration,
    quantity,
)

QWEN14B = gm.R1_DISTILL_QWEN_14B
H100 = GPUS["NVIDIA-H100-80GB-HBM3"]
P = 14_770_033_664  # 48 x 275,268,608 per layer + 2 x 152,064 x 5,120 embeddings + 5,120 final norm


def test_r1_distill_shape_matches_its_config():
    assert (QWEN14B.layers, QWEN14B.hidden_size, QWEN14B.attention_heads, QWEN14B.kv_heads) == (48, 5120, 40, 8)
    assert (QWEN14B.head_dim, QWEN14B.intermediate_size, QWEN14B.vocab_size) == (128, 13824, 152064)
    # per layer: q 5120^2 + 5120 bias, k and v 5120 x 1024 + 1024 bias, o 5120^2, MLP 3 x 5120 x 13824, 2 norms
    layer = 26_214_400 + 5_120 + 2 * (5_242_880 + 1_024) + 26_214_400 + 212_336_640 + 10_240
    assert layer == 275_268_608
    assert QWEN14B.parameters == 48 * layer + 2 * 778_567_680 + 5_120 == P
    assert gm.weight_bytes(QWEN14B) == pytest.approx(29.54e9, rel=1e-3)


def test_shape_from_config_defaults_and_errors():
    shape = gm.shape_from_config({"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
                                  "vocab_size": 1000, "intermediate_size": 128})
    assert (shape.kv_heads, shape.head_dim, shape.max_position_embeddings) == (4, 16, None)
    with pytest.raises(ValueError, match="intermediate_size"):
        gm.shape_from_config({"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "vocab_size": 10})


def test_kv_cache_bytes_per_token():
    assert gm.kv_bytes_per_token(QWEN14B) == 2 * 48 * 8 * 128 * 2 == 196_608
    assert gm.kv_bytes_per_token(QWEN14B, dtype_bytes=1) == 98_304  # fp8 KV cache
    assert gm.kv_bytes_per_token(QWEN14B, tp=2) == 98_304  # 4 of the 8 KV heads per GPU
    assert gm.kv_bytes_per_token(QWEN14B, tp=16) == 24_576  # more GPUs than KV heads: one replicated head each


def test_training_flops_of_14b_at_16k():
    n = 48 * (2 * 5120 * 5120 + 2 * 5120 * 1024 + 3 * 5120 * 13824) + 5120 * 152064  # matmul weights + lm_head
    assert QWEN14B.matmul_parameters == n == 13_990_625_280
    assert gm.flops_per_token(QWEN14B, 16384) == 6 * n + 12 * 48 * 5120 * 16384 == 132_262_133_760


def test_zero_state_per_gpu():
    assert gm.zero_bytes_per_gpu(QWEN14B, 8, "zero3") == 16 * P / 8 == 29_540_067_328
    assert gm.zero_bytes_per_gpu(QWEN14B, 16, "zero3") == 16 * P / 16 == 14_770_033_664
    assert gm.zero_bytes_per_gpu(QWEN14B, 8, "zero2") == 2 * P + 14 * P / 8
    assert gm.zero_bytes_per_gpu(QWEN14B, 8, "none") == 16 * P


def test_activations_with_gradient_checkpointing():
    assert gm.layer_activation_bytes_per_token(QWEN14B) == 8 * 5120 + 4 * 5120 + 4 * 1024 + 8 * 13824 == 176_128
    kept = 48 * 2 * 5120 * 16384 + 176_128 * 16384  # every layer's input + one layer recomputed
    assert gm.activation_bytes(QWEN14B, 16384, checkpointing=True, liger=True) == kept
    with_logits = gm.activation_bytes(QWEN14B, 16384, checkpointing=True, liger=False)
    assert with_logits == kept + 16384 * 152064 * 10
    assert gm.activation_bytes(QWEN14B, 16384, checkpointing=False, liger=True) == 48 * 176_128 * 16384


def _colocate(**overrides):
    args = {"world": 16, "util": 0.3, "tp": 1, "sleep": False, "prompt_tokens": 200, "completion_tokens": 6000,
            "per_device_batch": 1, "steps_per_generation": 8, "zero": "zero3", "checkpointing": True, "liger": False,
            "gpus_per_node": 8}
    return gm.check_grpo_colocate(QWEN14B, H100, **{**args, **overrides})


def test_grpo_colocate_rejected_at_default_memory_fraction():
    problems = _colocate()
    assert len(problems) == 1
    problem = problems[0]
    assert problem.field == "vllmGpuMemoryUtilization"
    assert "GRPO colocated vLLM gets 24.0 GB (0.3 × 80 GB) for 29.5 GB of weights" in problem.message
    assert "set vllmGpuMemoryUtilization ≥ 0.45 or vllmTensorParallelSize: 2" in problem.message
    assert problem.have_bytes == 24e9 < problem.need_bytes


@pytest.mark.parametrize("fix", [{"util": 0.45}, {"tp": 2}])
def test_grpo_colocate_accepted_with_either_fix(fix):
    assert _colocate(**fix) == []


def test_grpo_colocate_counts_the_trainer_sharing_the_gpu():
    # 8 GPUs: a 29.5 GB ZeRO-3 shard + activations + vLLM's 36 GB do not fit together...
    problems = _colocate(util=0.45, world=8)
    assert [p.field for p in problems] == ["vllmEnableSleepMode"]
    assert "exceed 80 GB" in problems[0].message
    # ...but with sleep mode vLLM's share is freed while the trainer computes.
    assert _colocate(util=0.45, world=8, sleep=True) == []


def test_training_memory_zero2_vs_zero3_at_16k():
    args = {"world": 8, "tokens": 16384, "checkpointing": True, "liger": False}
    assert gm.check_training(QWEN14B, H100, zero="zero3", **args) == []
    problems = gm.check_training(QWEN14B, H100, zero="zero2", **args)
    assert [p.field for p in problems] == ["deepspeed"]
    assert "deepspeed: zero3" in problems[0].message and "liger: true" in problems[0].message
    a100_40 = GPUS["NVIDIA-A100-SXM4-40GB"]
    assert gm.check_training(QWEN14B, a100_40, zero="zero3", **args)  # 29.5 GB of state alone nearly fills it


def test_vllm_sampling_checks_and_smallest_tp():
    assert gm.smallest_tp(QWEN14B, H100.memory_bytes, 131072, 0.9) == 1
    assert gm.smallest_tp(QWEN14B, H100.memory_bytes, 6200, 0.3) == 2
    assert gm.smallest_tp(QWEN14B, GPUS["NVIDIA-A100-SXM4-40GB"].memory_bytes, 131072, 0.9) == 2
    assert gm.smallest_tp(QWEN14B, GPUS["NVIDIA-L4"].memory_bytes, 131072, 0.9, gpus=1) is None
    problems = gm.check_vllm(QWEN14B, GPUS["NVIDIA-A100-SXM4-40GB"], util=0.9, tp=1, ctx_len=131072, gpus=8)
    assert [p.field for p in problems] == ["gpusPerNode"]  # no memory fraction fits: more GPUs does
    assert "gpusPerNode: 2" in problems[0].message
    assert gm.check_vllm(QWEN14B, H100, util=0.9, tp=8, ctx_len=131072, gpus=8) == []


def test_merge_host_memory():
    weights = gm.weight_bytes(QWEN14B)
    problems = gm.check_merge_memory(2 * weights, weights, 16 * 2**30)
    assert problems and problems[0].field == "resources.memory" and "88.6 GB" in problems[0].message
    assert gm.check_merge_memory(2 * weights, weights, 128 * 2**30) == []


def test_decode_roofline_by_hand():
    rate = gm.decode_rate(QWEN14B, H100, tp=8, util=0.9, prompt_tokens=200, mean_generated=4000, max_num_seqs=1024,
                          max_num_batched_tokens=16384, efficiency=0.5)
    # KV room for ~1,206 sequences of 2,200 tokens, so vLLM's 1,024 cap binds; HBM-bound step:
    step = (2 * P + 1024 * 2200 * 196_608) / (8 * 3.35e12) / 0.5
    assert (rate.batch, rate.bound, rate.kv_limited, rate.fits) == (1024, "memory", False, True)
    assert rate.tokens_per_second_per_gpu == pytest.approx(1024 / step / 8, rel=1e-9)
    h200 = gm.decode_rate(QWEN14B, GPUS["NVIDIA-H200"], tp=8, util=0.9, prompt_tokens=200, mean_generated=4000,
                          max_num_seqs=1024, max_num_batched_tokens=16384, efficiency=0.5)
    assert h200.tokens_per_second_per_gpu == pytest.approx(rate.tokens_per_second_per_gpu * 4.8 / 3.35)


def test_length_prior():
    assert capped_mean(8000, 6000) == pytest.approx(8000 * (1 - 2.718281828459045 ** -0.75))
    assert fit_uncapped_mean(capped_mean(5000, 6000), 6000) == pytest.approx(5000, rel=1e-6)
    assert expected_max(8000, 6000, 1) == pytest.approx(capped_mean(8000, 6000), rel=1e-4)
    assert capped_mean(8000, 6000) < expected_max(8000, 6000, 8) <= 6000


def test_gpu_table_and_quantities():
    assert gpu_for_product("nvidia-h200-141gb-hbm3e") is GPUS["NVIDIA-H200"]
    assert gpu_for_product("NVIDIA-Z900") is None
    assert all(spec.source for spec in GPUS.values())
    assert (quantity("500m"), quantity("16"), quantity("128Gi"), quantity("bad")) == (0.5, 16.0, 128 * 2**30, None)


CALIBRATION = {"format": 1, "gpu": "NVIDIA-H100-80GB-HBM3", "measured": "2026-12-02", "machine": "one H100",
               "sft": {"mfu": 0.41, "tokensPerSecondPerGpu": 2950.0},
               "decode": {"tokensPerSecondPerGpu": {"6000": 3100.0, "16384": 2100.0}, "tensorParallelSize": 1},
               "grpo": {"completionTokensPerSecondPerGpu": 410.0}}


def test_calibration_loads(tmp_path):
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(CALIBRATION))
    cal = load_calibration(path)
    assert (cal.gpu, cal.sft_mfu, cal.decode_tokens_per_second_per_gpu) == (
        "NVIDIA-H100-80GB-HBM3", 0.41, ((6000, 3100.0), (16384, 2100.0)))
    assert cal.grpo_completion_tokens_per_second_per_gpu == 410.0


@pytest.mark.parametrize(("change", "message"), [
    ({"gpu": None}, "gpu: required"),
    ({"gpu": "NVIDIA-Z900"}, "gpu: unknown product"),
    ({"sft": {"mfu": 1.5}}, "sft.mfu: expected a number in"),
    ({"decode": {"tokensPerSecondPerGpu": {"6k": 1.0}}}, "decode.tokensPerSecondPerGpu: keys are token caps"),
    ({"decode": {"tokensPerSecondPerGpu": {"6000": "fast"}}}, "decode.tokensPerSecondPerGpu.6000: expected a number"),
    ({"format": 2}, "format: only format 1"),
])
def test_calibration_errors_name_the_field(change, message):
    with pytest.raises(CalibrationError, match=message.replace(".", r"\.")):
        parse_calibration({**CALIBRATION, **change}, "cal.json")


def test_calibration_file_errors(tmp_path):
    with pytest.raises(CalibrationError, match="cannot read"):
        load_calibration(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CalibrationError, match="not JSON"):
        load_calibration(tmp_path / "bad.json")
