"""Where a pod's vLLM engines go: tensor parallel size (GPUs per engine) and data parallel size
(engines per pod), from the model's config.json, the GPU's memory and the stage's context (pure,
except `gpu_memory` and `visible_devices`, which look at the machine).

The rule (units: bytes; GB below = 10^9 bytes):

    per GPU of an engine spanning t GPUs:
      weights   = parameters x dtype bytes / t                (bf16/fp16: 2 bytes; vLLM's dtype=auto
                                                               also serves fp32 checkpoints in 16 bits)
      KV cache  = S x context x 2 (K and V) x layers x ceil(KV heads / t) x head dim x KV dtype bytes
                  (KV dtype: the model's 2 bytes, fp8: 1)
      overhead  = vLLM's profiling peak: max_num_batched_tokens x (4 x hidden + 3 x intermediate / t) x 2
                  + max_num_seqs x vocab x 8 (fp32 logits and probabilities) + 1 GB (CUDA graphs, NCCL)
      fits when weights + KV cache + overhead <= gpuMemoryUtilization x GPU memory

    t = the smallest power of two <= the pod's GPUs that divides the attention heads and fits with
        S = MIN_SEQUENCES (4) full-context sequences; if none does, the smallest that fits S = 1 (what
        vLLM itself needs to start). Engines per pod = GPUs // t.

S = 4, not 1: vLLM starts with room for one full-length sequence, but an engine that can hold only
one or two of them decodes at a small fraction of its memory bandwidth; four makes the tensor
parallel size grow before the batch collapses. Parameters count a Qwen2/Llama decoder: q/k/v/o
projections (q/k/v biases for Qwen2 or `attention_bias`), the SwiGLU MLP, two RMSNorms per layer,
embeddings and lm_head (one matrix when tied). max_num_seqs / max_num_batched_tokens are the values
vLLM's EngineArgs picks for the offline LLM class: 1024 / 16384 on GPUs of 70 GiB or more (not
A100), 256 / 8192 otherwise. The operator's feasibility check (fathom_operator.gpumemory) uses the
same terms with S = 1.

Worked example (tests/jobs/test_placement.py): DeepSeek-R1-Distill-Qwen-14B, eval context 16,384 +
4,096 = 20,480 tokens, 80 GB at 0.9 (72 GB): t = 1 needs 29.54 GB weights + 16.11 GB KV (4 x 20,480 x
196,608 bytes) + 4.28 GB overhead = 49.92 GB, so 8 GPUs run 8 engines.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import StageInputError

log = logging.getLogger("fathom_jobs.engines")

GB = 10**9
GIB = 2**30
MIN_SEQUENCES = 4
FIXED_OVERHEAD_BYTES = 1 * GB  # vLLM CUDA graphs (~0.5 GiB at start-up) + NCCL and other non-torch memory
PROMPT_TOKEN_BUDGET = 4096  # context = prompt budget + max tokens (a competition problem and a system prompt)
WEIGHT_DTYPE_BYTES = 2


class PlacementError(StageInputError):
    """The model cannot be served on this pod's GPUs at this context: exit 2 with the numbers."""


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden_size: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tied_embeddings: bool = False
    qkv_bias: bool = True
    max_position_embeddings: int | None = None

    @property
    def parameters(self) -> int:
        q, kv, hidden = self.attention_heads * self.head_dim, self.kv_heads * self.head_dim, self.hidden_size
        layer = hidden * (q + 2 * kv) + q * hidden + 3 * hidden * self.intermediate_size + 2 * hidden
        if self.qkv_bias:
            layer += q + 2 * kv
        return self.layers * layer + self.vocab_size * hidden * (1 if self.tied_embeddings else 2) + hidden


def shape_from_config(config: Mapping[str, Any], source: str = "config.json") -> ModelShape:
    """A Hugging Face config.json (Qwen2/Llama keys) -> ModelShape; ValueError names a missing key."""
    def need(key: str) -> int:
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{source}: {key}: expected a positive integer, got {value!r}")
        return value

    heads, hidden = need("num_attention_heads"), need("hidden_size")
    limit = config.get("max_position_embeddings")
    return ModelShape(
        layers=need("num_hidden_layers"), hidden_size=hidden, attention_heads=heads,
        kv_heads=need("num_key_value_heads") if "num_key_value_heads" in config else heads,
        head_dim=need("head_dim") if config.get("head_dim") else hidden // heads,
        intermediate_size=need("intermediate_size"), vocab_size=need("vocab_size"),
        tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        qkv_bias=bool(config.get("attention_bias", str(config.get("model_type", "")).startswith("qwen2"))),
        max_position_embeddings=limit if isinstance(limit, int) and not isinstance(limit, bool) else None)


def read_config(model_dir: str | Path) -> dict[str, Any] | None:
    try:
        document = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def context_length(model_dir: str | Path, max_tokens: int, prompt_budget: int = PROMPT_TOKEN_BUDGET) -> int:
    """vLLM's max_model_len for a stage: prompt budget + max tokens, within the model's own limit.

    A context shorter than the model's (131,072 for R1-Distill) frees KV cache for more sequences
    and lets a smaller tensor parallel size fit."""
    limit = (read_config(model_dir) or {}).get("max_position_embeddings")
    wanted = max_tokens + prompt_budget
    return min(wanted, limit) if isinstance(limit, int) and not isinstance(limit, bool) else wanted


# ----------------------------------------------------------------------------------- the rule
def batch_defaults(gpu_bytes: float, gpu_name: str = "") -> tuple[int, int]:
    """(max_num_seqs, max_num_batched_tokens) vLLM's EngineArgs picks for the offline LLM class."""
    if gpu_bytes >= 70 * GIB and "A100" not in gpu_name.upper():
        return 1024, 16384
    return 256, 8192


def kv_bytes_per_token(shape: ModelShape, tp: int = 1, kv_dtype_bytes: float = 2) -> float:
    """One token's K and V over all layers, on one GPU of an engine spanning tp GPUs."""
    return 2 * shape.layers * math.ceil(shape.kv_heads / tp) * shape.head_dim * kv_dtype_bytes


@dataclass(frozen=True)
class Need:
    weights: float
    kv_cache: float
    overhead: float

    @property
    def total(self) -> float:
        return self.weights + self.kv_cache + self.overhead


def need_per_gpu(shape: ModelShape, tp: int, context: int, *, sequences: int = MIN_SEQUENCES,
                 kv_cache_dtype: str = "auto", max_num_seqs: int = 1024, max_num_batched_tokens: int = 16384,
                 dtype_bytes: float = WEIGHT_DTYPE_BYTES) -> Need:
    kv_dtype_bytes = 1 if kv_cache_dtype.startswith("fp8") else dtype_bytes
    profile = max_num_batched_tokens * (4 * shape.hidden_size + 3 * shape.intermediate_size / tp) * 2
    return Need(weights=shape.parameters * dtype_bytes / tp,
                kv_cache=sequences * context * kv_bytes_per_token(shape, tp, kv_dtype_bytes),
                overhead=profile + max_num_seqs * shape.vocab_size * 8 + FIXED_OVERHEAD_BYTES)


@dataclass(frozen=True)
class Placement:
    tensor_parallel_size: int
    data_parallel_size: int  # engines per pod
    why: str

    def device_groups(self, devices: list[str]) -> list[list[str]]:
        """The pod's GPUs, tensor_parallel_size per engine, in order; leftovers stay idle."""
        t = self.tensor_parallel_size
        return [devices[i * t:(i + 1) * t] for i in range(self.data_parallel_size)]


def smallest_tp(shape: ModelShape, *, gpus: int, gpu_bytes: float, context: int, utilization: float,
                kv_cache_dtype: str = "auto", gpu_name: str = "", sequences: int = MIN_SEQUENCES) -> int | None:
    """The smallest power-of-two tensor parallel size <= gpus (dividing the heads) that fits, or None."""
    seqs, batched = batch_defaults(gpu_bytes, gpu_name)
    tp = 1
    while tp <= gpus:
        if shape.attention_heads % tp == 0:
            need = need_per_gpu(shape, tp, context, sequences=sequences, kv_cache_dtype=kv_cache_dtype,
                                max_num_seqs=seqs, max_num_batched_tokens=batched)
            if need.total <= utilization * gpu_bytes:
                return tp
        tp *= 2
    return None


def plan(shape: ModelShape | None, *, gpus: int, context: int | None, utilization: float = 0.9,
         tensor_parallel_size: int | None = None, kv_cache_dtype: str = "auto", gpu_bytes: float | None = None,
         gpu_name: str = "") -> Placement:
    """Tensor and data parallel sizes for a pod with `gpus` GPUs (see the module docstring)."""
    gpus = max(1, gpus)
    if tensor_parallel_size is not None:
        if tensor_parallel_size > gpus:
            raise PlacementError(f"tensorParallelSize {tensor_parallel_size} is more than the pod's {gpus} GPUs")
        dp = gpus // tensor_parallel_size
        return Placement(tensor_parallel_size, dp, f"tensorParallelSize {tensor_parallel_size} as set: {dp} engines")
    if gpus == 1:
        return Placement(1, 1, "one GPU: one engine")
    if shape is None or gpu_bytes is None or not context:
        # Without the model's shape or the GPU's memory nothing can be sized: one engine over all GPUs
        # (what vLLM would need for the largest model) rather than a guess that may not fit.
        return Placement(gpus, 1, "model shape or GPU memory unknown: one engine over every GPU")
    budget = utilization * gpu_bytes
    for sequences in (MIN_SEQUENCES, 1):
        tp = smallest_tp(shape, gpus=gpus, gpu_bytes=gpu_bytes, context=context, utilization=utilization,
                         kv_cache_dtype=kv_cache_dtype, gpu_name=gpu_name, sequences=sequences)
        if tp is not None:
            seqs, batched = batch_defaults(gpu_bytes, gpu_name)
            need = need_per_gpu(shape, tp, context, sequences=sequences, kv_cache_dtype=kv_cache_dtype,
                                max_num_seqs=seqs, max_num_batched_tokens=batched)
            why = (f"tensor parallel {tp}: {need.weights / GB:.2f} GB weights + {need.kv_cache / GB:.2f} GB KV cache "
                   f"({sequences} x {context:,} tokens) + {need.overhead / GB:.2f} GB overhead per GPU <= "
                   f"{utilization:g} x {gpu_bytes / GB:.1f} GB; {gpus // tp} engines")
            return Placement(tp, gpus // tp, why)
    largest = 1 << (gpus.bit_length() - 1)
    need = need_per_gpu(shape, largest, context, sequences=1, kv_cache_dtype=kv_cache_dtype,
                        max_num_seqs=batch_defaults(gpu_bytes, gpu_name)[0],
                        max_num_batched_tokens=batch_defaults(gpu_bytes, gpu_name)[1])
    raise PlacementError(
        f"the model does not fit on {gpus} GPUs of {gpu_bytes / GB:.1f} GB: even over {largest} GPUs it needs "
        f"{need.weights / GB:.2f} GB weights + {need.kv_cache / GB:.2f} GB KV cache of one {context:,}-token sequence "
        f"+ {need.overhead / GB:.2f} GB overhead per GPU, more than {utilization:g} x {gpu_bytes / GB:.1f} GB = "
        f"{budget / GB:.1f} GB; use more or larger GPUs, a shorter maxTokens or kvCacheDtype: fp8")


# ------------------------------------------------------------------------------- the machine
def visible_devices(gpus: int) -> list[str]:
    """The pod's GPU ids as CUDA_VISIBLE_DEVICES names them (0..gpus-1 when it is unset)."""
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return (listed or [str(i) for i in range(gpus)])[:gpus]


def gpu_memory() -> tuple[float, str] | None:
    """(total bytes, product name) of the first visible GPU, or None without one.

    NVML first: it reads the device without creating a CUDA context in this process (the engines
    run in their own processes and want the whole GPU); torch.cuda.get_device_properties otherwise."""
    try:
        pynvml = importlib.import_module("pynvml")  # nvidia-ml-py, a vLLM dependency: GPU images only
        pynvml.nvmlInit()
        try:
            first = visible_devices(1)[0]
            handle = (pynvml.nvmlDeviceGetHandleByIndex(int(first)) if first.isdigit()
                      else pynvml.nvmlDeviceGetHandleByUUID(first))
            name = pynvml.nvmlDeviceGetName(handle)
            return float(pynvml.nvmlDeviceGetMemoryInfo(handle).total), name.decode() if isinstance(name, bytes) else name
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # no NVML library, no driver, no device: try torch
        log.debug("NVML: %s", exc)
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return float(props.total_memory), str(props.name)
    except Exception as exc:
        log.debug("torch.cuda: %s", exc)
    return None


def plan_for_model(model_dir: str | Path, *, gpus: int, context: int | None, utilization: float = 0.9,
                   tensor_parallel_size: int | None = None, kv_cache_dtype: str = "auto") -> Placement:
    """`plan` for a model directory on this machine's GPUs (memory looked up only when it decides)."""
    config = read_config(model_dir)
    shape = None
    if config is not None:
        try:
            shape = shape_from_config(config, f"{model_dir}/config.json")
        except ValueError as exc:
            log.warning("cannot size the engines: %s", exc)
    context = context or (shape.max_position_embeddings if shape else None)
    memory = gpu_memory() if tensor_parallel_size is None and gpus > 1 else None
    placement = plan(shape, gpus=gpus, context=context, utilization=utilization,
                     tensor_parallel_size=tensor_parallel_size, kv_cache_dtype=kv_cache_dtype,
                     gpu_bytes=memory[0] if memory else None, gpu_name=memory[1] if memory else "")
    log.info("vLLM placement for %s: %s", model_dir, placement.why)
    return placement
