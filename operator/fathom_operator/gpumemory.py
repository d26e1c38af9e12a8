"""GPU memory and throughput physics of one model shape (pure): will a stage fit, and how fast it decodes.

Units are bytes (messages print GB = 10^9 bytes, like the GPU table in `hardware.py`). Formulas:

- weights: parameters x dtype bytes (bf16: 2).
- KV cache per token: 2 (K and V) x layers x KV heads x head dim x dtype bytes (fp8: 1). With tensor
  parallel size t a GPU holds ceil(KV heads / t) heads of every layer.
- ZeRO (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter
  Models", section 3: mixed-precision Adam keeps 2 + 2 + 12 bytes per parameter: bf16 weights, bf16
  gradients, fp32 master weights + momentum + variance). Per GPU over N GPUs: ZeRO-3 16P/N,
  ZeRO-2 2P + 14P/N, none 16P. ZeRO-3 also gathers the layer being computed and the prefetched one.
- activations (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
  Models", section 4: full recomputation keeps 2·s·b·h bytes per layer plus one layer's activations).
  One Qwen2 layer (bf16, FlashAttention so no s x s scores, no dropout) keeps per token: residual and
  both norm outputs/inputs 8H, Q and attention output 4·q, K and V 4·kv·d, the SwiGLU gate, up,
  activation and product 8I. For Qwen2.5-14B that is 176,128 bytes = 34.4 H, Korthikanti's 34·s·b·h.
  Logits: tokens x vocab x 10 bytes without Liger's fused cross-entropy (bf16 logits, transformers'
  fp32 upcast, the fp32 log-softmax cross_entropy saves), ~0 with it (chunked).
- vLLM: weights/t + overhead + KV cache of at least one max-length sequence must fit in
  gpu_memory_utilization x GPU memory (vLLM refuses to start otherwise). Overhead = its profiling run
  (max_num_batched_tokens through one layer's MLP + max_num_seqs rows of fp32 logits and probs) + a
  fixed 1 GB for CUDA graphs and non-torch memory (assumed; vLLM prints both at start-up).
- decode roofline: every step reads the weights once plus the KV cache of every running sequence,
  and computes 2·N_matmul + 4·L·q·context FLOPs per sequence; step time = max(bytes / bandwidth,
  FLOPs / peak) / efficiency. The batch is min(max_num_seqs, KV budget / (context x KV per token)),
  context = prompt + half the mean generation (a sequence's average length while it decodes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from fathom_jobs import specs

from . import hardware as hw
from .hardware import GB, Cited, GpuSpec

Zero = Literal["zero3", "zero2", "none"]
LOGIT_BYTES_PER_ELEMENT = Cited(10, "bf16 logits (2) + fp32 upcast in transformers' ForCausalLMLoss (4) + fp32 log-softmax (4)")
ZERO3_LIVE_LAYERS = Cited(2, "DeepSpeed ZeRO-3 gathers the layer being computed and prefetches the next (zero3.json)")
TRAINER_RESERVE_BYTES = Cited(2 * GB, "assumed: CUDA context (~0.5 GB), NCCL buffers, allocator fragmentation")
VLLM_FIXED_OVERHEAD_BYTES = Cited(1 * GB, "assumed: vLLM CUDA graphs (~0.5 GiB at start-up) + non-torch memory")
VLLM_SLEEP_RESIDUAL_BYTES = Cited(1 * GB, "assumed: what a level-2 sleeping vLLM keeps (CUDA graphs, context)")


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden_size: int
    attention_heads: int
    kv_heads: int
    vocab_size: int
    intermediate_size: int
    head_dim: int
    parameters: int
    tied_embeddings: bool = False
    max_position_embeddings: int | None = None
    source: str = ""

    @property
    def q_dim(self) -> int:
        return self.attention_heads * self.head_dim

    @property
    def layer_parameters(self) -> int:
        kv = self.kv_heads * self.head_dim
        return self.hidden_size * (2 * self.q_dim + 2 * kv) + 3 * self.hidden_size * self.intermediate_size

    @property
    def matmul_parameters(self) -> int:
        """Non-embedding matmul weights + the lm_head (PaLM's N; bench_train.flops_per_token's)."""
        return self.layers * self.layer_parameters + self.hidden_size * self.vocab_size


def shape_from_config(config: Mapping[str, Any], source: str = "config.json") -> ModelShape:
    """A Hugging Face config.json (Qwen2/Llama keys) -> ModelShape; ValueError names a missing key.

    Parsed by the sampling job's own reader (fathom_jobs.engines.placement), so both sides size the
    same model; q/k/v biases are assumed unless the config says otherwise (Qwen2 has them)."""
    from fathom_jobs.engines import placement

    job = placement.shape_from_config({"attention_bias": True, **config}, source)
    return ModelShape(job.layers, job.hidden_size, job.attention_heads, job.kv_heads, job.vocab_size,
                      job.intermediate_size, job.head_dim, job.parameters, job.tied_embeddings,
                      job.max_position_embeddings, source)


R1_DISTILL_QWEN_14B = shape_from_config(
    {"num_hidden_layers": 48, "hidden_size": 5120, "num_attention_heads": 40, "num_key_value_heads": 8,
     "intermediate_size": 13824, "vocab_size": 152064, "tie_word_embeddings": False,
     "max_position_embeddings": 131072},
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B config.json (the Qwen2.5-14B architecture; 14.77B parameters)")


# ------------------------------------------------------------------------------------- bytes
def weight_bytes(shape: ModelShape, dtype_bytes: float = 2) -> float:
    return shape.parameters * dtype_bytes


def kv_bytes_per_token(shape: ModelShape, dtype_bytes: float = 2, tp: int = 1) -> float:
    """One token's K and V over all layers, on one GPU of a tensor-parallel group of size tp."""
    return 2 * shape.layers * math.ceil(shape.kv_heads / tp) * shape.head_dim * dtype_bytes


def zero_bytes_per_gpu(shape: ModelShape, world: int, zero: Zero) -> float:
    """Weights + gradients + Adam state per GPU (ZeRO paper's 2 + 2 + 12 bytes per parameter)."""
    p = shape.parameters
    if zero == "zero3":
        return 16 * p / world
    if zero == "zero2":
        return 2 * p + 14 * p / world
    return 16 * p


def trainer_resident_bytes(shape: ModelShape, world: int, zero: Zero) -> float:
    """ZeRO state + the layers ZeRO-3 holds gathered + the reserve: what a trainer keeps between steps."""
    gathered = ZERO3_LIVE_LAYERS.value * shape.layer_parameters * 2 if zero == "zero3" else 0.0
    return zero_bytes_per_gpu(shape, world, zero) + gathered + TRAINER_RESERVE_BYTES.value


def layer_activation_bytes_per_token(shape: ModelShape) -> float:
    return 8 * shape.hidden_size + 4 * shape.q_dim + 4 * shape.kv_heads * shape.head_dim + 8 * shape.intermediate_size


def activation_bytes(shape: ModelShape, tokens: float, *, checkpointing: bool, liger: bool,
                     logit_tokens: float | None = None) -> float:
    """Activations of one micro-batch of `tokens` tokens (Korthikanti et al. 2022) + its logits."""
    layer = layer_activation_bytes_per_token(shape) * tokens
    kept = shape.layers * 2 * shape.hidden_size * tokens + layer if checkpointing else shape.layers * layer
    logits = 0.0 if liger else (tokens if logit_tokens is None else logit_tokens) * shape.vocab_size * LOGIT_BYTES_PER_ELEMENT.value
    return kept + logits


def vllm_overhead_bytes(shape: ModelShape, tp: int, max_num_batched_tokens: int, max_num_seqs: int) -> float:
    """vLLM's profiling peak (one layer's MLP over the token budget, sampler logits) + fixed overhead."""
    mlp = max_num_batched_tokens * (4 * shape.hidden_size + 3 * shape.intermediate_size / tp) * 2
    sampler = max_num_seqs * shape.vocab_size * 8  # fp32 logits + fp32 probabilities
    return mlp + sampler + VLLM_FIXED_OVERHEAD_BYTES.value


def vllm_need_bytes(shape: ModelShape, tp: int, ctx_len: int, max_num_batched_tokens: int, max_num_seqs: int,
                    kv_dtype_bytes: float = 2) -> tuple[float, float, float]:
    """(weights, one ctx_len sequence's KV cache, overhead) per GPU."""
    return (weight_bytes(shape) / tp, kv_bytes_per_token(shape, kv_dtype_bytes, tp) * ctx_len,
            vllm_overhead_bytes(shape, tp, max_num_batched_tokens, max_num_seqs))


def fits_vllm(shape: ModelShape, gpu_mem: float, ctx_len: int, util: float, tp: int, *,
              max_num_batched_tokens: int = 16384, max_num_seqs: int = 1024) -> bool:
    return sum(vllm_need_bytes(shape, tp, ctx_len, max_num_batched_tokens, max_num_seqs)) <= util * gpu_mem


def smallest_tp(shape: ModelShape, gpu_mem: float, ctx_len: int, util: float, gpus: int = 8, *,
                max_num_batched_tokens: int = 16384, max_num_seqs: int = 1024) -> int | None:
    """Smallest power-of-two tensor-parallel size <= gpus (dividing the heads) that fits, or None."""
    tp = 1
    while tp <= gpus:
        if shape.attention_heads % tp == 0 and fits_vllm(shape, gpu_mem, ctx_len, util, tp,
                                                        max_num_batched_tokens=max_num_batched_tokens,
                                                        max_num_seqs=max_num_seqs):
            return tp
        tp *= 2
    return None


# ------------------------------------------------------------------------------------- checks
@dataclass(frozen=True)
class Problem:
    field: str  # the stage field to change, e.g. "vllmGpuMemoryUtilization"
    message: str  # the numbers and the fix
    need_bytes: float
    have_bytes: float

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def gb(value: float) -> str:
    return f"{value / GB:,.1f} GB"


def _util_fix(need: float, gpu_mem: float) -> float:
    return math.ceil(need / gpu_mem / 0.05 - 1e-9) * 0.05  # the next 0.05 step that fits


def check_vllm(shape: ModelShape, gpu: GpuSpec, *, util: float, tp: int, ctx_len: int, gpus: int,
               what: str = "vLLM", util_field: str = "gpuMemoryUtilization", tp_field: str = "gpusPerNode",
               max_num_batched_tokens: int = 16384, max_num_seqs: int = 1024) -> list[Problem]:
    """vLLM sampling at ctx_len under gpu_memory_utilization util with tensor parallel size tp."""
    weights, kv, overhead = vllm_need_bytes(shape, tp, ctx_len, max_num_batched_tokens, max_num_seqs)
    have, need = util * gpu.memory_bytes, weights + kv + overhead
    if need <= have:
        return []
    fixes = []
    if _util_fix(need, gpu.memory_bytes) <= 0.95:
        fixes.append(f"set {util_field} ≥ {_util_fix(need, gpu.memory_bytes):.2f}")
    better = smallest_tp(shape, gpu.memory_bytes, ctx_len, util, gpus, max_num_batched_tokens=max_num_batched_tokens,
                         max_num_seqs=max_num_seqs)
    if better is not None:
        fixes.append(f"{tp_field}: {better}")
    fix = " or ".join(fixes) if fixes else "use a GPU with more memory or a shorter context"
    return [Problem(util_field if fixes and fixes[0].startswith("set") else tp_field,
                    f"{what} gets {gb(have)} ({util:g} × {gpu.memory_gb:g} GB) for {gb(weights)} of weights"
                    f"{f' (tensor parallel {tp})' if tp > 1 else ''} + {gb(kv)} KV cache of one {ctx_len:,}-token "
                    f"sequence + {gb(overhead)} overhead; {fix}", need, have)]


def check_training(shape: ModelShape, gpu: GpuSpec, *, world: int, zero: Zero, tokens: int, checkpointing: bool,
                   liger: bool, what: str = "training", length_field: str = "maxLength",
                   reserve_bytes: float = 0.0) -> list[Problem]:
    """One micro-batch of `tokens` tokens per GPU: ZeRO state + activations + logits + reserve."""
    def need_for(z: Zero, n: int, lig: bool) -> float:
        return (trainer_resident_bytes(shape, n, z) + reserve_bytes
                + activation_bytes(shape, tokens, checkpointing=checkpointing, liger=lig))

    need, have = need_for(zero, world, liger), gpu.memory_bytes
    if need <= have:
        return []
    fixes: list[tuple[str, str]] = []
    if zero != "zero3" and need_for("zero3", world, liger) <= have:
        fixes.append(("deepspeed", "deepspeed: zero3"))
    if not liger and need_for(zero, world, True) <= have:
        fixes.append(("liger", "liger: true"))
    if not checkpointing:
        fixes.append(("gradientCheckpointing", "gradientCheckpointing: true"))
    more = next((n for n in (world * 2, world * 4, world * 8) if need_for(zero, n, liger) <= have), None)
    if more is not None:
        fixes.append(("nodes", f"{more} GPUs (more nodes)"))
    fixes.append((length_field, f"a shorter {length_field}"))
    state = trainer_resident_bytes(shape, world, zero)
    act = activation_bytes(shape, tokens, checkpointing=checkpointing, liger=liger)
    return [Problem(fixes[0][0], f"{what} at {tokens:,} tokens per GPU needs {gb(need)} per GPU ({zero} on {world} GPUs: "
                                 f"{gb(state)} weights/gradients/Adam/reserve + {gb(act)} activations and logits) "
                                 f"of {gpu.memory_gb:g} GB; use {' or '.join(f for _, f in fixes)}", need, have)]


def check_grpo_colocate(shape: ModelShape, gpu: GpuSpec, *, world: int, util: float, tp: int, sleep: bool,
                        prompt_tokens: int, completion_tokens: int, per_device_batch: int, steps_per_generation: int,
                        zero: Zero, checkpointing: bool, liger: bool, gpus_per_node: int) -> list[Problem]:
    """TRL 1.16 colocate mode: vLLM and the trainer share every GPU.

    vLLM takes util x memory; without sleep mode it keeps it while the trainer's ZeRO shard, optimizer
    state, activations and logits are also there. With sleep (level 2) vLLM frees weights and KV cache
    during training, so the trainer's peak sees only a residual, and during generation the trainer's
    resident state (ZeRO shard + reserve, no activations) sits beside vLLM's share.
    """
    ctx = prompt_tokens + completion_tokens
    seqs, batched = per_device_batch * tp * steps_per_generation, 4096
    problems = check_vllm(shape, gpu, util=util, tp=tp, ctx_len=ctx, gpus=min(gpus_per_node, world),
                          what="GRPO colocated vLLM", util_field="vllmGpuMemoryUtilization",
                          tp_field="vllmTensorParallelSize", max_num_batched_tokens=batched, max_num_seqs=seqs)
    vllm_share = util * gpu.memory_bytes
    resident = trainer_resident_bytes(shape, world, zero)
    peak = resident + activation_bytes(shape, per_device_batch * ctx, checkpointing=checkpointing, liger=liger,
                                       logit_tokens=per_device_batch * completion_tokens)
    have = gpu.memory_bytes
    # (phase, what vLLM holds then, what the trainer holds then)
    phases = ([("generating", vllm_share, resident), ("training", VLLM_SLEEP_RESIDUAL_BYTES.value, peak)] if sleep
              else [("training", vllm_share, peak)])
    for phase, held, trainer in phases:
        if held + trainer <= have:
            continue
        fixes = [] if sleep else ["vllmEnableSleepMode: true"]
        room = (have - trainer) / have
        if (phase == "generating" or not sleep) and room >= 0.05:
            fixes.append(f"vllmGpuMemoryUtilization ≤ {math.floor(room / 0.05 + 1e-9) * 0.05:.2f} (if vLLM still fits)")
        fixes.append("more nodes (a smaller ZeRO shard)")
        problems.append(Problem(
            "vllmEnableSleepMode" if not sleep else "nodes",
            f"GRPO colocate while {phase}: vLLM's {gb(held)} + the trainer's {gb(trainer)} ({zero} state on {world} GPUs "
            f"{gb(zero_bytes_per_gpu(shape, world, zero))}"
            f"{'' if phase == 'generating' else f', activations and logits of {per_device_batch * ctx:,} tokens'}) "
            f"exceed {gpu.memory_gb:g} GB; use {' or '.join(fixes)}", held + trainer, have))
    return problems


def check_merge_memory(input_bytes: float, output_bytes: float, host_bytes: float | None) -> list[Problem]:
    """A linear merge holds its inputs (mapped) and its output on the host: inputs + output <= memory."""
    need = input_bytes + output_bytes
    if host_bytes is None or need <= host_bytes:
        return []
    return [Problem("resources.memory", f"merge holds {gb(input_bytes)} of inputs + {gb(output_bytes)} of output "
                                        f"= {gb(need)} but the pod has {gb(host_bytes)}; set resources.memory ≥ "
                                        f"{math.ceil(need / 2**30 * 1.1)}Gi", need, host_bytes)]


def engine_placement(shape: ModelShape, gpu: GpuSpec, *, gpus: int, context: int, util: float,
                     tp: int | None = None, kv_cache_dtype: str = "auto") -> tuple[int, int] | None:
    """(tensor parallel size, engines per pod) the sampling job will choose (fathom_jobs.engines.placement,
    the job's own rule), or None when the model cannot fit on the pod at all."""
    from fathom_jobs.engines import placement

    job_shape = placement.ModelShape(
        layers=shape.layers, hidden_size=shape.hidden_size, attention_heads=shape.attention_heads,
        kv_heads=shape.kv_heads, head_dim=shape.head_dim, intermediate_size=shape.intermediate_size,
        vocab_size=shape.vocab_size, tied_embeddings=shape.tied_embeddings,
        max_position_embeddings=shape.max_position_embeddings)
    try:
        chosen = placement.plan(job_shape, gpus=gpus, context=context, utilization=util, tensor_parallel_size=tp,
                                kv_cache_dtype=kv_cache_dtype, gpu_bytes=gpu.memory_bytes, gpu_name=gpu.product)
    except placement.PlacementError:
        return None
    return chosen.tensor_parallel_size, chosen.data_parallel_size


def check_stage(p: specs.Spec, shape: ModelShape, gpu: GpuSpec, *, name: str, gpus: int, nodes: int,
                memory_bytes: float | None, placement: object = None) -> list[Problem]:
    """The rules above applied to one stage's parameters on its placement (gpus per pod, nodes).

    Sampling engines' knobs the stage models do not have yet (vLLM tensor parallel size and memory
    fraction) are read when present and otherwise take the engine's defaults; `placement` is the
    stage object that may carry them.
    """
    def knob(field: str, default: float) -> float:
        value = getattr(placement, field, None) if placement is not None else None
        return float(value if value is not None else getattr(p, field, None) or default)

    prompt, seqs_batched = int(hw.PROMPT_TOKENS.value), hw.vllm_batch_defaults(gpu)
    if isinstance(p, specs.MergeParams):  # render's defaults: 200Gi per GPU, 16Gi for a CPU pod
        memory = memory_bytes or (200 * 2**30 * gpus if gpus else 16 * 2**30)
        out = shape.parameters * {"float32": 4}.get(p.dtype, 2)
        return check_merge_memory(len(p.models) * weight_bytes(shape), out, memory)
    util, tp = knob("gpu_memory_utilization", hw.VLLM_GPU_MEMORY_UTILIZATION.value), int(knob("tensor_parallel_size", gpus))
    engine_ctx = shape.max_position_embeddings  # solve-rate and annotate leave vLLM's max_model_len at the model's

    def vllm(ctx: int, what: str) -> list[Problem]:
        return check_vllm(shape, gpu, util=util, tp=tp, ctx_len=ctx, gpus=gpus, what=f"{name}: {what}",
                          max_num_seqs=seqs_batched[0], max_num_batched_tokens=seqs_batched[1])

    if isinstance(p, specs.EvalParams) and p.engine == "vllm":
        return vllm(p.max_tokens + int(hw.EVAL_PROMPT_BUDGET.value), "vLLM")
    if isinstance(p, specs.SamplingParams) and p.engine == "vllm":
        cap = p.max_cap if isinstance(p, specs.SolveRateParams) else p.max_tokens  # solve-rate: its largest cap
        return vllm(engine_ctx or cap + prompt, "vLLM")
    if isinstance(p, specs.AnnotateParams) and p.judge.backend == "vllm":
        return vllm(engine_ctx or p.judge.max_tokens + prompt, "vLLM judge")
    if isinstance(p, specs.GrpoParams) and p.use_vllm:
        return check_grpo_colocate(
            shape, gpu, world=nodes * gpus, util=p.vllm_gpu_memory_utilization, tp=p.vllm_tensor_parallel_size,
            sleep=p.vllm_enable_sleep_mode, prompt_tokens=prompt, completion_tokens=p.max_completion_tokens,
            per_device_batch=p.per_device_batch_size, steps_per_generation=p.gradient_accumulation_steps,
            zero=p.deepspeed, checkpointing=p.gradient_checkpointing, liger=p.liger, gpus_per_node=gpus)
    if isinstance(p, (specs.SftParams, specs.GrpoParams)):
        sft = isinstance(p, specs.SftParams)
        length = p.max_length if isinstance(p, specs.SftParams) else prompt + p.max_completion_tokens
        return check_training(shape, gpu, world=nodes * gpus, zero=p.deepspeed, tokens=p.per_device_batch_size * length,
                              checkpointing=p.gradient_checkpointing, liger=p.liger, what=f"{name}: training",
                              length_field="maxLength" if sft else "maxCompletionTokens")
    return []


# ------------------------------------------------------------------------------ decode roofline
@dataclass(frozen=True)
class DecodeRate:
    tokens_per_second_per_gpu: float
    batch: int  # concurrent sequences per tensor-parallel group
    bound: str  # "memory" or "compute"
    kv_limited: bool
    fits: bool  # False: not even one sequence's KV cache fits (costed as if max_num_seqs did)


def decode_rate(shape: ModelShape, gpu: GpuSpec, *, tp: int, util: float, prompt_tokens: float,
                mean_generated: float, max_num_seqs: int, max_num_batched_tokens: int,
                efficiency: float, kv_dtype_bytes: float = 2) -> DecodeRate:
    """Steady-state decode tokens/s per GPU of one vLLM replica over tp GPUs (the roofline above).
    An fp8 KV cache (kv_dtype_bytes 1) holds twice the sequences and halves what each step reads of it."""
    context = prompt_tokens + mean_generated / 2
    kv_token = kv_bytes_per_token(shape, kv_dtype_bytes, tp=tp) * tp  # the whole replica's bytes per cached token
    budget = tp * (util * gpu.memory_bytes - vllm_overhead_bytes(shape, tp, max_num_batched_tokens, max_num_seqs)) \
        - weight_bytes(shape)
    by_kv = int(budget // (context * kv_token)) if budget > 0 else max_num_seqs
    batch = max(1, min(max_num_seqs, by_kv))
    memory_s = (weight_bytes(shape) + batch * context * kv_token) / (tp * gpu.hbm_bytes_per_s)
    compute_s = batch * (2 * shape.matmul_parameters + 4 * shape.layers * shape.q_dim * context) / (tp * gpu.bf16_flops)
    step = max(memory_s, compute_s) / efficiency
    return DecodeRate(batch / step / tp, batch, "memory" if memory_s >= compute_s else "compute", by_kv < max_num_seqs,
                      budget > context * kv_token)


def flops_per_token(shape: ModelShape, context: float) -> float:
    """Training FLOPs per token: 6N + 12·L·q·T (PaLM appendix B; T = the attended context)."""
    return 6 * shape.matmul_parameters + 12 * shape.layers * shape.q_dim * context


def roofline_fraction(cal: hw.Calibration, gpu: GpuSpec) -> float | None:
    """Measured decode tokens/s over this roofline's ideal (efficiency 1) for the calibration's own setup,
    averaged over its caps; None when it was measured on another shape than the 14B one bench uses."""
    bench = R1_DISTILL_QWEN_14B  # bench/gpu_calibrate.py decodes this shape
    if cal.decode_parameters and abs(cal.decode_parameters / bench.parameters - 1) > 0.01:
        return None
    seqs, batched = hw.vllm_batch_defaults(gpu)
    contexts = dict(cal.decode_context_tokens)
    fractions = [measured / decode_rate(bench, gpu, tp=cal.decode_tensor_parallel_size, util=cal.decode_gpu_memory_utilization,
                                        prompt_tokens=contexts.get(cap, cap / 2), mean_generated=0,
                                        max_num_seqs=cal.decode_max_num_seqs or seqs, max_num_batched_tokens=batched,
                                        efficiency=1.0).tokens_per_second_per_gpu
                 for cap, measured in cal.decode_tokens_per_second_per_gpu]
    return min(1.0, sum(fractions) / len(fractions)) if fractions else None
