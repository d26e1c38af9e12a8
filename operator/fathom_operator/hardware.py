"""GPU products, efficiency constants and throughput rates the forecast uses, each with its source.

Nothing here is fitted to the seeds' GPU-hours: GPU figures are vendor datasheet values, efficiencies
are published benchmarks, CPU and store rates come from this repository's own `bench/RESULTS.md`,
and whatever has no source yet says "assumed" (the forecast's `basis` repeats that word).

GPU products are keyed by the `nvidia.com/gpu.product` label GPU feature discovery puts on a node
(the NVML product name with spaces replaced by dashes). Memory is the datasheet's GB taken as 10^9
bytes: CUDA reports ~7% more on these parts (an H100 80GB shows 81,559 MiB), a margin the memory
model keeps for the CUDA context, NCCL buffers and allocator fragmentation.

A `Calibration` measured on real hardware (`bench/gpu_calibrate.py` writes it) replaces the cited
efficiencies for its GPU product. Its JSON format, version 1:

    {"format": 1, "gpu": "NVIDIA-H100-80GB-HBM3", "measured": "2026-12-02", "machine": "free text",
     "sft":    {"mfu": 0.41, "tokensPerSecondPerGpu": 2950.0, "seq": 16384, "layers": 6},
     "decode": {"tokensPerSecondPerGpu": {"6000": 3100.0, "16384": 2100.0},
                "contextTokens": {"6000": 3256, "16384": 8448},
                "parameters": 14770033664, "tensorParallelSize": 1, "gpuMemoryUtilization": 0.9,
                "maxNumSeqs": 1024},
     "grpo":   {"completionTokensPerSecondPerGpu": 410.0, "parameters": 2264401920}}

`gpu` and `measured` are required, every section is optional. `decode.tokensPerSecondPerGpu` is keyed
by the generation cap (a string, as JSON keys are); `contextTokens` is the mean context length while
those tokens were decoded (default: cap / 2), which with the other decode fields lets the forecast
turn the measurement into a fraction of the HBM roofline that transfers to other setups. `grpo` is
used only for a model of the same `parameters` (the bench measures a cut model: informational).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fathom_jobs import specs

GB = 1e9


@dataclass(frozen=True)
class Cited:
    """A constant and where it comes from ("assumed: ..." when nothing better exists yet)."""

    value: float
    source: str


@dataclass(frozen=True)
class GpuSpec:
    product: str
    bf16_flops: float  # dense (no sparsity) peak BF16 tensor-core FLOP/s
    hbm_bytes_per_s: float
    memory_gb: float
    source: str

    @property
    def memory_bytes(self) -> float:
        return self.memory_gb * GB


def _gpu(product: str, tflops: float, tb_per_s: float, gb: float, source: str) -> GpuSpec:
    return GpuSpec(product, tflops * 1e12, tb_per_s * 1e12, gb, source)


_H100 = "NVIDIA H100 Tensor Core GPU datasheet"
_H200 = "NVIDIA H200 Tensor Core GPU datasheet"
_A100 = "NVIDIA A100 Tensor Core GPU datasheet"
_SPECS = (
    _gpu("NVIDIA-H100-80GB-HBM3", 989.4, 3.35, 80, f"{_H100} (SXM5): 989.4 TFLOPS dense BF16, 3.35 TB/s, 80 GB"),
    _gpu("NVIDIA-H100-PCIe", 756.5, 2.0, 80, f"{_H100} (PCIe): 1,513 TFLOPS sparse BF16 / 2, 2.0 TB/s, 80 GB"),
    _gpu("NVIDIA-H100-NVL", 835.5, 3.9, 94, f"{_H100} (NVL): 1,671 TFLOPS sparse BF16 / 2, 3.9 TB/s, 94 GB"),
    _gpu("NVIDIA-H200", 989.4, 4.8, 141, f"{_H200} (SXM): 989.4 TFLOPS dense BF16, 4.8 TB/s, 141 GB"),
    _gpu("NVIDIA-H200-NVL", 835.5, 4.8, 141, f"{_H200} (NVL): 1,671 TFLOPS sparse BF16 / 2, 4.8 TB/s, 141 GB"),
    _gpu("NVIDIA-A100-SXM4-80GB", 312.0, 2.039, 80, f"{_A100} (SXM 80GB): 312 TFLOPS BF16, 2,039 GB/s, 80 GB"),
    _gpu("NVIDIA-A100-SXM4-40GB", 312.0, 1.555, 40, f"{_A100} (SXM 40GB): 312 TFLOPS BF16, 1,555 GB/s, 40 GB"),
    _gpu("NVIDIA-A100-80GB-PCIe", 312.0, 1.935, 80, f"{_A100} (PCIe 80GB): 312 TFLOPS BF16, 1,935 GB/s, 80 GB"),
    _gpu("NVIDIA-A100-PCIE-40GB", 312.0, 1.555, 40, f"{_A100} (PCIe 40GB): 312 TFLOPS BF16, 1,555 GB/s, 40 GB"),
    _gpu("NVIDIA-L40S", 362.05, 0.864, 48, "NVIDIA L40S datasheet: 733 TFLOPS sparse BF16 / 2, 864 GB/s, 48 GB"),
    _gpu("NVIDIA-L4", 121.0, 0.3, 24, "NVIDIA L4 datasheet: 242 TFLOPS sparse BF16 / 2, 300 GB/s, 24 GB"),
    _gpu("NVIDIA-B200", 2250.0, 8.0, 180, "NVIDIA HGX B200 datasheet: 4.5 PFLOPS sparse BF16 / 2 per GPU, 8 TB/s, 180 GB"),
)
# Other spellings the label takes for the same part (driver and GFD versions differ).
_ALIASES = {
    "NVIDIA-H200-141GB-HBM3e": "NVIDIA-H200",
    "NVIDIA-H200-141GB-HBM3": "NVIDIA-H200",
    "NVIDIA-H100-SXM5-80GB": "NVIDIA-H100-80GB-HBM3",
    "NVIDIA-H100-80GB-PCIe": "NVIDIA-H100-PCIe",
}
GPUS: dict[str, GpuSpec] = {s.product: s for s in _SPECS}
GPUS.update({alias: GPUS[target] for alias, target in _ALIASES.items()})
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"


def gpu_for_product(label: str | None) -> GpuSpec | None:
    """The table row of a `nvidia.com/gpu.product` label value (case-insensitive), or None."""
    if not label:
        return None
    if label in GPUS:
        return GPUS[label]
    folded = {key.casefold(): spec for key, spec in GPUS.items()}
    return folded.get(label.casefold())


# --------------------------------------------------------------------------------- efficiencies
_FOUNDRY = "MosaicML llm-foundry scripts/train/benchmarking/README.md, H100 80GB BF16, FSDP full shard"
# Training MFU (6N + 12LHT model FLOPs / peak) by model size: the published row closest to a
# 8k-16k context with activation checkpointing. (upper bound on parameters, MFU)
TRAINING_MFU_BY_SIZE: tuple[tuple[float, Cited], ...] = (
    (4e9, Cited(0.3634, f"{_FOUNDRY}: MPT-3B at 16,384 tokens, 8 GPUs, MFU 36.34%")),
    (10e9, Cited(0.3714, f"{_FOUNDRY}: MPT-7B at 8,192 tokens, 8 GPUs, activation checkpointing, MFU 37.14%")),
    (20e9, Cited(0.3555, f"{_FOUNDRY}: MPT-13B at 16,384 tokens, 8 GPUs, activation checkpointing, MFU 35.55%")),
    (float("inf"), Cited(0.2992, f"{_FOUNDRY}: MPT-30B at 8,192 tokens, 8 GPUs, activation checkpointing, MFU 29.92%")),
)


def training_mfu(parameters: float) -> Cited:
    return next(mfu for bound, mfu in TRAINING_MFU_BY_SIZE if parameters <= bound)


# Fraction of the decode roofline (HBM bytes per step / bandwidth, or FLOPs / peak) vLLM reaches.
DECODE_EFFICIENCY = Cited(0.5, "Databricks/MosaicML 'LLM Inference Performance Engineering: Best Practices' "
                               "(2023): model bandwidth utilization of 7B-class decode around 50-60%; low end taken")

# ----------------------------------------------------------------------------- vLLM / TRL defaults
VLLM_GPU_MEMORY_UTILIZATION = Cited(0.9, "fathom_jobs.engines.vllm_engine.VllmEngine default (= vLLM's default)")
VLLM_BIG_GPU_MAX_NUM_SEQS = Cited(1024, "vLLM EngineArgs.get_batch_defaults: LLM class on GPUs >= 70 GiB, not A100")
VLLM_SMALL_GPU_MAX_NUM_SEQS = Cited(256, "vLLM EngineArgs.get_batch_defaults: LLM class on other GPUs")
VLLM_BIG_GPU_BATCHED_TOKENS = Cited(16384, "vLLM EngineArgs.get_batch_defaults: LLM class on GPUs >= 70 GiB, not A100")
VLLM_SMALL_GPU_BATCHED_TOKENS = Cited(8192, "vLLM EngineArgs.get_batch_defaults: LLM class on other GPUs")
TRL_COLOCATE_BATCHED_TOKENS = Cited(4096, "TRL 1.16 VLLMGeneration: LLM(max_num_batched_tokens=4096) in colocate mode")


def vllm_batch_defaults(gpu: GpuSpec) -> tuple[int, int]:
    """(max_num_seqs, max_num_batched_tokens) vLLM picks for the offline LLM class on this GPU."""
    big = gpu.memory_gb * GB >= 70 * 2**30 and "A100" not in gpu.product.upper()
    if big:
        return int(VLLM_BIG_GPU_MAX_NUM_SEQS.value), int(VLLM_BIG_GPU_BATCHED_TOKENS.value)
    return int(VLLM_SMALL_GPU_MAX_NUM_SEQS.value), int(VLLM_SMALL_GPU_BATCHED_TOKENS.value)


# ------------------------------------------------------------------------ CPU, store, data priors
_RESULTS = "bench/RESULTS.md"
# The store client is CPU-bound (sha256 + transfer): bytes/s per core from its measured CPU cost per MB,
# up to what the node's network share allows.
STORE_DOWNLOAD_BYTES_PER_CORE_S = Cited(1e6 / 8.99e-3, f"{_RESULTS}: download_dir costs 8.99 client CPU-ms per MB")
STORE_UPLOAD_BYTES_PER_CORE_S = Cited(1e6 / 5.94e-3, f"{_RESULTS}: upload_dir costs 5.94 client CPU-ms per MB")
STORE_NETWORK_BYTES_PER_S = Cited(1.25e9, "assumed: a 10 Gb/s share of the node's network to the object store")
MERGE_INPUT_BYTES_PER_S = Cited(4.04e9 / 2.3, f"{_RESULTS}: merge of 2 x 2.02 GB checkpoints in 2.3 s warm, 2 cores")
GRADINGS_PER_CPU_SECOND = Cited(52107 / 2, f"{_RESULTS}: grade_batch strict, 52,107 gradings/s on 2 cores")
# Tiny-model trainer runs on 2 cores, converted to model FLOP/s per core with the same FLOP formula.
CPU_TRAIN_FLOPS_PER_CORE = Cited(1.76e10, f"{_RESULTS}: bench_train sft --shape tiny, 6,360 tokens/s x 5.54 MFLOP/token / 2 cores")
CPU_GENERATE_FLOPS_PER_CORE = Cited(9.6e8, f"{_RESULTS}: bench_train grpo --shape tiny, 1,539 completion tokens/s "
                                           "x 1.25 MFLOP/token / 2 cores (includes the training step: a lower bound)")
PREPARE_CPU_SECONDS_PER_PROBLEM = Cited(0.01, "assumed: MinHash near-dedup + 13-gram decontamination per problem")
CURATE_CPU_SECONDS_PER_ROW = Cited(0.002, "assumed: pyarrow filtering, sorting and chain selection per row")
JUDGE_API_SECONDS_PER_REQUEST = Cited(20.0, "assumed: one o3-mini-class rating request (up to 4,096 output tokens)")
POD_START_SECONDS = Cited(120.0, "assumed: scheduling, a cached image, Python imports")
CPU_STAGE_CPUS = Cited(4, "fathom_operator.render: CPU_STAGE_CPU default request")
CPUS_PER_GPU = Cited(16, "fathom_operator.render: CPU_PER_GPU default request")

DEFAULT_CORPUS_PROBLEMS = Cited(100_000, "Fathom-R1-14B model card: ~100K unique problems after dedup/decontamination")
_CARD = "Fathom-R1-14B model card"
KEEP_FRACTION_BY_PRESET: dict[str, Cited] = {
    "curriculum": Cited(0.05, f"{_CARD}: Iterative Curriculum Learning set, 5K of ~100K problems"),
    "rl-compression": Cited(0.077, f"{_CARD}: RL compression seed set, 7.7K of ~100K problems"),
    "shortest-chains": Cited(0.095, f"{_CARD}: SFT Shortest Chains set, 9.5K of ~100K problems"),
}
DEFAULT_KEEP_FRACTION = Cited(0.1, "assumed: a custom selection keeps 10%")
KEEP_EVERYTHING = Cited(1.0, "the selection's bands cover every problem")


def keep_fraction_prior(effective: specs.CurateParams) -> tuple[Cited, str]:
    """A curate stage's kept fraction: its preset's published set size (also when the explicit selection
    equals a preset's), everything for bands covering [0, 1] x difficulty 1-10, else the default."""
    for name, cited in KEEP_FRACTION_BY_PRESET.items():
        preset = specs.CurateParams.model_validate({"data": effective.data, "preset": name}).effective()
        if (preset.select, preset.keep) == (effective.select, effective.keep):
            return cited, f"preset {name}"
    select = effective.select
    d, band = (select.difficulty, select.solve_rate) if select else (None, None)
    if d and ((d.min or 1) > 1 or (d.max or 10) < 10):
        return DEFAULT_KEEP_FRACTION, "assumed"
    if band and (band.above is not None or band.below is not None or (band.at_least or 0) > 0
                 or (band.at_most if band.at_most is not None else 1) < 1):
        return DEFAULT_KEEP_FRACTION, "assumed"
    return KEEP_EVERYTHING, "all"
DIFFICULTY_LEVELS = 10  # the annotate judge's 1-10 scale
_DIFFICULTY_PRIOR = "assumed: judge ratings spread evenly over 1-10 (pass `estimate: {problems: N}` on the stage once known)"


def difficulty_share(low: int | None, high: int | None) -> Cited:
    """The share of rated problems a difficulty band [low, high] keeps, under an even spread of ratings."""
    low, high = max(1, low or 1), min(DIFFICULTY_LEVELS, high or DIFFICULTY_LEVELS)
    return Cited(max(0, high - low + 1) / DIFFICULTY_LEVELS, _DIFFICULTY_PRIOR)


# Length prior: uncapped response length ~ exponential with this mean; capped mean = E[min(L, cap)].
REASONING_MEAN_TOKENS = Cited(8000, "assumed: R1-distilled reasoning chains on competition math")
PROMPT_TOKENS = Cited(200, "assumed: system prompt + one competition problem")
SOLUTION_TOKENS = Cited(400, "assumed: a reference solution")
_DATA = "rows of jobs/fathom_jobs/data/{}.jsonl"
BENCHMARK_PROBLEMS: dict[str, Cited] = {
    "aime25": Cited(30, _DATA.format("aime25")), "aime24": Cited(30, _DATA.format("aime24")),
    "hmmt25": Cited(30, _DATA.format("hmmt25")), "amc23": Cited(40, _DATA.format("amc23")),
    "gpqa-diamond": Cited(198, _DATA.format("gpqa_diamond")), "gsm8k-sample": Cited(210, _DATA.format("gsm8k_sample")),
}
UNKNOWN_BENCHMARK_PROBLEMS = Cited(100, "assumed: a benchmark given by URI")
EVAL_PROMPT_BUDGET = Cited(4096, "fathom_jobs.stages.evaluate.PROMPT_TOKEN_BUDGET (vLLM max_model_len = it + maxTokens)")


def store_rate(cpus: float, upload: bool = False) -> float:
    per_core = (STORE_UPLOAD_BYTES_PER_CORE_S if upload else STORE_DOWNLOAD_BYTES_PER_CORE_S).value
    return min(cpus * per_core, STORE_NETWORK_BYTES_PER_S.value)


def capped_mean(mu: float, cap: float) -> float:
    """E[min(L, cap)] for L exponential with mean mu: the length prior's expected tokens under a cap."""
    return mu * (1 - math.exp(-cap / mu))


def fit_uncapped_mean(mean: float, cap: float) -> float:
    """The mu whose capped mean at `cap` is `mean` (bisection; capped_mean rises with mu)."""
    if mean >= cap * 0.999:
        return cap * 1000
    low, high = mean, cap * 1000
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if capped_mean(mid, cap) < mean else (low, mid)
    return (low + high) / 2


def expected_max(mu: float, cap: float, n: int, steps: int = 256) -> float:
    """E[min(max of n lengths, cap)] = integral over [0, cap] of 1 - (1 - e^(-x/mu))^n (midpoint rule)."""
    width = cap / steps
    return sum(1 - (1 - math.exp(-(i + 0.5) * width / mu)) ** n for i in range(steps)) * width


def quantity(text: str | None) -> float | None:
    """A Kubernetes quantity ('500m', '16', '128Gi', '64G') as a number, or None."""
    match = re.fullmatch(r"([0-9.]+)([EPTGMK]i?|m)?", text or "")
    if not match:
        return None
    units = {"m": 1e-3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
             **{f"{u}i": 1024.0 ** (i + 1) for i, u in enumerate("KMGTPE")}}
    return float(match.group(1)) * units.get(match.group(2) or "", 1.0)


# ---------------------------------------------------------------------------------- calibration
class CalibrationError(ValueError):
    """A calibration file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Calibration:
    gpu: str
    measured: str
    machine: str = ""
    sft_mfu: float | None = None
    sft_tokens_per_second_per_gpu: float | None = None
    decode_tokens_per_second_per_gpu: tuple[tuple[int, float], ...] = ()  # (cap, tokens/s), by cap
    decode_context_tokens: tuple[tuple[int, float], ...] = ()
    decode_parameters: int | None = None
    decode_tensor_parallel_size: int = 1
    decode_gpu_memory_utilization: float = 0.9
    decode_max_num_seqs: int | None = None
    grpo_completion_tokens_per_second_per_gpu: float | None = None
    grpo_parameters: int | None = None  # the model GRPO was measured on (bench uses a cut one)
    source: str = field(default="calibration", compare=False)

    def describe(self) -> str:
        return f"{self.source} ({self.gpu}, measured {self.measured}{', ' + self.machine if self.machine else ''})"


def _number(doc: Mapping[str, Any], key: str, where: str, *, low: float = 0.0, high: float | None = None) -> float | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CalibrationError(f"{where}.{key}: expected a number, got {value!r}")
    if value <= low or (high is not None and value > high):
        bound = f"in ({low}, {high}]" if high is not None else f"above {low}"
        raise CalibrationError(f"{where}.{key}: expected a number {bound}, got {value!r}")
    return float(value)


def _section(doc: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, Mapping):
        raise CalibrationError(f"{where}.{key}: expected an object, got {type(value).__name__}")
    return value


def _by_cap(doc: Mapping[str, Any], key: str, where: str) -> tuple[tuple[int, float], ...]:
    table = _section(doc, key, where)
    pairs = []
    for cap in table:
        if not str(cap).isdigit() or int(cap) <= 0:
            raise CalibrationError(f"{where}.{key}: keys are token caps like \"6000\", got {cap!r}")
        number = _number(table, cap, f"{where}.{key}")
        assert number is not None
        pairs.append((int(cap), number))
    return tuple(sorted(pairs))


def parse_calibration(doc: Any, source: str = "calibration") -> Calibration:
    """A calibration document (the JSON above) -> Calibration, or CalibrationError."""
    if not isinstance(doc, Mapping):
        raise CalibrationError(f"{source}: expected a JSON object, got {type(doc).__name__}")
    if doc.get("format", 1) != 1:
        raise CalibrationError(f"{source}: format: only format 1 is understood, got {doc.get('format')!r}")
    for key in ("gpu", "measured"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            raise CalibrationError(f"{source}: {key}: required string is missing")
    product = gpu_for_product(doc["gpu"])
    if product is None:
        raise CalibrationError(f"{source}: gpu: unknown product {doc['gpu']!r}; expected one of {', '.join(sorted(GPUS))}")
    sft, decode, grpo = (_section(doc, k, source) for k in ("sft", "decode", "grpo"))
    where = f"{source}: decode"
    tp = _number(decode, "tensorParallelSize", where)
    params = _number(decode, "parameters", where)
    seqs = _number(decode, "maxNumSeqs", where)
    return Calibration(
        gpu=product.product,
        measured=doc["measured"], machine=str(doc.get("machine", "")),
        sft_mfu=_number(sft, "mfu", f"{source}: sft", high=1.0),
        sft_tokens_per_second_per_gpu=_number(sft, "tokensPerSecondPerGpu", f"{source}: sft"),
        decode_tokens_per_second_per_gpu=_by_cap(decode, "tokensPerSecondPerGpu", where),
        decode_context_tokens=_by_cap(decode, "contextTokens", where),
        decode_parameters=int(params) if params else None,
        decode_tensor_parallel_size=int(tp) if tp else 1,
        decode_gpu_memory_utilization=_number(decode, "gpuMemoryUtilization", where, high=1.0) or 0.9,
        decode_max_num_seqs=int(seqs) if seqs else None,
        grpo_completion_tokens_per_second_per_gpu=_number(grpo, "completionTokensPerSecondPerGpu", f"{source}: grpo"),
        grpo_parameters=int(grpo_params) if (grpo_params := _number(grpo, "parameters", f"{source}: grpo")) else None,
        source=source,
    )


def load_calibration(path: str | Path) -> Calibration:
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise CalibrationError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CalibrationError(f"{path}: not JSON: {exc}") from None
    return parse_calibration(doc, str(path))
