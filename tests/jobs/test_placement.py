"""How many GPUs one vLLM engine spans (fathom_jobs.engines.placement), against numbers worked out
by hand from the rule in the module docstring: per GPU, weights / t + KV cache of 4 full-context
sequences + vLLM's profiling overhead <= gpuMemoryUtilization x GPU memory."""

from __future__ import annotations

import json

import pytest

from fathom_jobs.engines import placement
from fathom_jobs.engines.placement import GB, PlacementError, need_per_gpu, plan, shape_from_config

# DeepSeek-R1-Distill-Qwen-14B's config.json (the Qwen2.5-14B architecture).
QWEN2_14B = {"model_type": "qwen2", "num_hidden_layers": 48, "hidden_size": 5120, "num_attention_heads": 40,
             "num_key_value_heads": 8, "intermediate_size": 13824, "vocab_size": 152064,
             "tie_word_embeddings": False, "max_position_embeddings": 131072, "torch_dtype": "bfloat16"}
# Qwen2.5-32B's shape.
QWEN2_32B = {**QWEN2_14B, "num_hidden_layers": 64, "intermediate_size": 27648}
# Llama-3-70B's shape (no q/k/v biases).
LLAMA_70B = {"model_type": "llama", "num_hidden_layers": 80, "hidden_size": 8192, "num_attention_heads": 64,
             "num_key_value_heads": 8, "intermediate_size": 28672, "vocab_size": 128256,
             "tie_word_embeddings": False, "max_position_embeddings": 8192, "torch_dtype": "bfloat16"}
H100 = dict(gpu_bytes=80 * GB, gpu_name="NVIDIA H100 80GB HBM3")  # 80 GB: 0.9 of it is 72 GB
EVAL_CONTEXT = 16384 + 4096  # maxTokens + the prompt budget


def test_14b_fits_one_gpu_so_eight_gpus_run_eight_engines():
    shape = shape_from_config(QWEN2_14B)
    # Per layer: q/k/v 5120 x (5120 + 2 x 1024) + o 5120 x 5120 = 62,914,560; q/k/v biases 7,168;
    # MLP 3 x 5120 x 13824 = 212,336,640; two norms 10,240: 275,268,608 x 48 layers = 13,212,893,184.
    # Embeddings + lm_head 2 x 152064 x 5120 = 1,557,135,360; final norm 5,120.
    assert shape.parameters == 14_770_033_664
    need = need_per_gpu(shape, 1, EVAL_CONTEXT)
    assert need.weights == 29_540_067_328  # x 2 bytes
    # K and V x 48 layers x 8 KV heads x 128 head dim x 2 bytes = 196,608 bytes a token, x 4 x 20,480.
    assert need.kv_cache == 4 * 20480 * 196_608 == 16_106_127_360
    # 16,384 batched tokens x (4 x 5120 + 3 x 13824) x 2 + 1,024 seqs x 152,064 x 8 + 1 GB.
    assert need.overhead == 2_030_043_136 + 1_245_708_288 + 10**9
    assert round(need.total / GB, 2) == 49.92  # <= 72
    placed = plan(shape, gpus=8, context=EVAL_CONTEXT, utilization=0.9, **H100)
    assert (placed.tensor_parallel_size, placed.data_parallel_size) == (1, 8)
    assert placed.device_groups([str(i) for i in range(8)]) == [[str(i)] for i in range(8)]
    assert placed.why == ("tensor parallel 1: 29.54 GB weights + 16.11 GB KV cache (4 x 20,480 tokens) + 4.28 GB "
                          "overhead per GPU <= 0.9 x 80.0 GB; 8 engines")


def test_32b_needs_two_gpus_per_engine():
    shape = shape_from_config(QWEN2_32B)
    assert shape.parameters == 32_763_876_352
    # t = 1: 65.53 GB weights + 4 x 20,480 x 262,144 = 21.47 GB KV + 5.63 GB overhead = 92.64 GB > 72.
    assert round(need_per_gpu(shape, 1, EVAL_CONTEXT).total / GB, 2) == 92.64
    # t = 2: 32.76 + 10.74 (4 KV heads per GPU) + 4.28 = 47.78 GB.
    assert round(need_per_gpu(shape, 2, EVAL_CONTEXT).total / GB, 2) == 47.78
    placed = plan(shape, gpus=8, context=EVAL_CONTEXT, utilization=0.9, **H100)
    assert (placed.tensor_parallel_size, placed.data_parallel_size) == (2, 4)
    assert placed.device_groups([str(i) for i in range(8)]) == [["0", "1"], ["2", "3"], ["4", "5"], ["6", "7"]]


def test_70b_needs_four_gpus_per_engine():
    shape = shape_from_config(LLAMA_70B)
    assert shape.parameters == 70_553_706_496
    # t = 2: 70.55 + 13.42 + 4.53 = 88.51 GB > 72; t = 4: 35.28 + 6.71 + 3.83 = 45.82 GB.
    assert round(need_per_gpu(shape, 2, EVAL_CONTEXT).total / GB, 2) == 88.51
    assert round(need_per_gpu(shape, 4, EVAL_CONTEXT).total / GB, 2) == 45.82
    placed = plan(shape, gpus=8, context=EVAL_CONTEXT, utilization=0.9, **H100)
    assert (placed.tensor_parallel_size, placed.data_parallel_size) == (4, 2)


def test_memory_share_and_fp8_kv_cache_change_the_answer():
    shape = shape_from_config(QWEN2_14B)
    # At 0.6 (48 GB) the 14B's 49.92 GB no longer fits on one GPU.
    assert plan(shape, gpus=8, context=EVAL_CONTEXT, utilization=0.6, **H100).tensor_parallel_size == 2
    # fp8 halves the KV cache: 8.05 GB instead of 16.11, 41.87 GB in all, which fits 0.6.
    fp8 = need_per_gpu(shape, 1, EVAL_CONTEXT, kv_cache_dtype="fp8")
    assert fp8.kv_cache * 2 == need_per_gpu(shape, 1, EVAL_CONTEXT).kv_cache
    assert plan(shape, gpus=8, context=EVAL_CONTEXT, utilization=0.6, kv_cache_dtype="fp8",
                **H100).tensor_parallel_size == 1


def test_explicit_tensor_parallel_size_and_what_cannot_fit():
    shape = shape_from_config(QWEN2_14B)
    placed = plan(shape, gpus=8, context=EVAL_CONTEXT, tensor_parallel_size=4, **H100)
    assert (placed.tensor_parallel_size, placed.data_parallel_size) == (4, 2)
    with pytest.raises(PlacementError, match="tensorParallelSize 16 is more than the pod's 8 GPUs"):
        plan(shape, gpus=8, context=EVAL_CONTEXT, tensor_parallel_size=16, **H100)
    # One GPU: nothing to decide, and no GPU memory is needed to decide it.
    assert plan(shape, gpus=1, context=EVAL_CONTEXT).tensor_parallel_size == 1
    # 70B on two 80 GB GPUs: not even one sequence fits; the message says what to change.
    with pytest.raises(PlacementError) as failed:
        plan(shape_from_config(LLAMA_70B), gpus=2, context=EVAL_CONTEXT, utilization=0.9, **H100)
    message = str(failed.value)
    assert "70.55 GB weights" in message and "72.0 GB" in message and "kvCacheDtype: fp8" in message


def test_plan_for_model_reads_config_and_context(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps(QWEN2_32B))
    monkeypatch.setattr(placement, "gpu_memory", lambda: (80 * GB, "NVIDIA H100 80GB HBM3"))
    assert placement.context_length(tmp_path, 16384) == EVAL_CONTEXT
    assert placement.context_length(tmp_path, 200_000) == 131072  # the model's own limit
    placed = placement.plan_for_model(tmp_path, gpus=8, context=EVAL_CONTEXT)
    assert (placed.tensor_parallel_size, placed.data_parallel_size) == (2, 4)
    # No GPU to measure: one engine over every GPU rather than a guess that may not fit.
    monkeypatch.setattr(placement, "gpu_memory", lambda: None)
    assert placement.plan_for_model(tmp_path, gpus=8, context=EVAL_CONTEXT).tensor_parallel_size == 8


def test_visible_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert placement.visible_devices(4) == ["0", "1", "2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert placement.visible_devices(4) == ["4", "5", "6", "7"]
