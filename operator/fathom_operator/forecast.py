"""What a recipe will cost before it runs (pure): GPU-hours, dollars and wall time per stage.

Counts flow through the DAG: prepare's corpus size (measured, hinted, or the seeds' ~100K), annotate
and solve-rate keep it, curate keeps a fraction (hinted, or the seeds' published set size for its
preset), SFT trains on chains x mean chain tokens, GRPO on prompts x numGenerations. Per stage:

- generation (solve-rate, eval, a local annotate judge, GRPO rollouts): prompts x samples x expected
  tokens. Expected tokens = E[min(L, cap)] with L exponential (mean `REASONING_MEAN_TOKENS`), unless a
  measured or hinted mean of a stage sampling the same model replaces it (refitted to this cap).
  Decode tokens/s per GPU = the HBM roofline of `gpumemory.decode_rate` x `DECODE_EFFICIENCY` (or the
  calibration's measured fraction of that roofline). GRPO rollouts are rounds of
  perDeviceBatchSize x gradientAccumulationSteps x TP sequences, each round as long as its longest one.
- training: tokens x (6N + 12·L·q·T) FLOPs, T = the mean chain length (packed chains do not attend to
  each other), at the size class's MFU (or the calibration's); GRPO trains on prompt + completion
  tokens and adds one 2N forward (TRL recomputes old log-probs whenever vLLM generates).
- merge: inputs downloaded + merged + output uploaded at the rates in `hardware.py`; CPU stages:
  CPU-seconds from a per-row rate. Every pod also pays `POD_START_SECONDS` and its model download.

Cost per stage = GPU-hours x the pool's gpuHourUSD + CPU-hours x cpuHourUSD, as `cost.py` charges.
Each row's `basis` says which numbers were measured, hinted or assumed, and cites the constants.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fathom_jobs import specs

from . import dag
from . import hardware as hw
from .api.hints import HINTS, MEASURED, EstimateHints, MeasuredStage, ModelInfo
from .api.recipe import FathomRecipe, StageCommon, stage_params
from .cost import rounded
from .gpumemory import (
    R1_DISTILL_QWEN_14B,
    ModelShape,
    Problem,
    check_stage,
    decode_rate,
    engine_placement,
    flops_per_token,
    roofline_fraction,
    shape_from_config,
    weight_bytes,
)

DEFAULT_GPU = "NVIDIA-H100-80GB-HBM3"
NO_HINTS, NOT_MEASURED = EstimateHints.model_validate({}), MeasuredStage.model_validate({})


@dataclass(frozen=True)
class StageForecast:
    name: str
    type: str
    pool: str
    pods: int
    gpus_per_pod: int
    gpu_hours: float
    cpu_hours: float
    usd: float
    wall_seconds: float
    basis: tuple[str, ...]


@dataclass(frozen=True)
class StageProblem:
    stage: str
    path: str  # spec.stages[i].<field>
    problem: Problem


@dataclass(frozen=True)
class Forecast:
    recipe: str
    stages: tuple[StageForecast, ...]
    gpu_hours: float
    usd: float
    wall_seconds: float  # the DAG's critical path
    budget_usd: float | None
    warnings: tuple[str, ...]
    problems: tuple[StageProblem, ...]
    model_basis: str = ""  # where the base model's shape came from

    def remaining_usd(self, spent: float) -> float:
        """What is left to spend of this forecast once `spent` USD are paid (never below 0)."""
        return rounded(max(0.0, self.usd - spent))


def _shape(model: ModelShape | ModelInfo | Mapping[str, Any] | None, base_uri: str) -> tuple[ModelShape | None, str]:
    """The base model's shape: given (a ModelShape, modelInfo, or a config.json dict), or the 14B constant."""
    if isinstance(model, Mapping) and "num_hidden_layers" in model:
        return shape_from_config(model, "config.json given"), "model shape from the given config.json"
    if isinstance(model, Mapping):
        model = ModelInfo.model_validate(model)
    if isinstance(model, ModelInfo):
        shape = shape_from_config(model.config(), "modelInfo")
        return dataclasses.replace(shape, parameters=model.parameters or shape.parameters), "model shape hinted (modelInfo)"
    if isinstance(model, ModelShape):
        return model, f"model shape given ({model.source or 'ModelShape'})"
    if "r1-distill-qwen-14b" in base_uri.lower():
        return R1_DISTILL_QWEN_14B, f"model shape: {R1_DISTILL_QWEN_14B.source}"
    return None, f"base model {base_uri} has no known shape: pass modelInfo; its GPU work is left at 0"


@dataclass
class _Flow:
    count: float
    basis: str  # short: where the count comes from
    tokens: float = 0.0  # mean generated tokens (samples) or chain tokens (chains)
    corpus: float | None = None  # the count before a difficulty filter: what the seeds' set sizes are fractions of
    corpus_basis: str = ""


class _Builder:
    """Walks the DAG once; not shared (each forecast() builds its own)."""

    def __init__(self, recipe: FathomRecipe, calibration: hw.Calibration | None, shape: ModelShape | None,
                 hints: dict[str, EstimateHints], measured: dict[str, MeasuredStage]) -> None:
        self.spec, self.calibration, self.shape = recipe.spec, calibration, shape
        self.hints, self.measured = hints, measured
        self.stages = {s.name: s for s in recipe.spec.stages}
        self.params = {s.name: stage_params(s) for s in recipe.spec.stages}
        self.flows: dict[str, _Flow] = {}
        self.warnings: list[str] = []

    # ---------------------------------------------------------------- placement
    def gpus(self, stage: StageCommon) -> int:
        pool = self.spec.node_pools.get(stage.pool)
        return stage.gpus_per_node if stage.gpus_per_node is not None else (pool.gpus_per_node if pool else 0)

    def gpu(self, stage: StageCommon) -> hw.GpuSpec:
        pool = self.spec.node_pools.get(stage.pool)
        label = pool.node_selector.get(hw.GPU_PRODUCT_LABEL) if pool else None
        spec = hw.gpu_for_product(label)
        if spec is None:
            note = (f'pool "{stage.pool}": unknown GPU product {label!r}' if label else
                    f'pool "{stage.pool}" has no {hw.GPU_PRODUCT_LABEL} nodeSelector') + f"; assuming {DEFAULT_GPU}"
            self.warn(note)
            spec = hw.GPUS[DEFAULT_GPU]
        if pool is not None and pool.gpu_memory_gib:  # the pool's own figure wins over the product's
            spec = dataclasses.replace(spec, memory_gb=pool.gpu_memory_gib * 2**30 / hw.GB)
        return spec

    def warn(self, note: str) -> None:
        if note not in self.warnings:
            self.warnings.append(note)

    def cpus(self, stage: StageCommon) -> float:
        requested = hw.quantity(stage.resources.cpu if stage.resources else None)
        gpus = self.gpus(stage)
        return requested or (hw.CPUS_PER_GPU.value * gpus if gpus else hw.CPU_STAGE_CPUS.value)

    # ---------------------------------------------------------------- counts and lengths
    def _given(self, name: str, key: str) -> tuple[float | None, str]:
        value = getattr(self.measured.get(name, NOT_MEASURED), key, None)
        if value is not None:
            return float(value), "measured"
        hint_key = "problems" if key == "rows" else key
        value = getattr(self.hints.get(name, NO_HINTS), hint_key, None)
        return (float(value), "hinted") if value is not None else (None, "")

    def flow(self, name: str) -> _Flow:
        if name not in self.flows:  # a URI input: nothing known about it
            self.warn(f"{name}: a URI input; pass estimate hints for the stages reading it")
            self.flows[name] = _Flow(0, "a URI input")
        return self.flows[name]

    def length(self, stage: str, model: str, cap: int) -> tuple[float, str]:
        """Expected generated tokens per sample of `model` under `cap`, with its basis."""
        value, how = self._given(stage, "mean_tokens")
        if value is not None:
            return min(value, cap), f"mean tokens {value:,.0f} {how}"
        for other, params in self.params.items():
            refs = [getattr(params, "model", None)] + list(getattr(params, "models", []) or [])
            if other == stage or model not in refs or not isinstance(params, specs.SamplingParams):
                continue
            seen, seen_how = self._given(other, "mean_tokens")
            if seen is not None:
                seen_cap = params.max_cap if isinstance(params, specs.SolveRateParams) else params.max_tokens
                mu = hw.fit_uncapped_mean(min(seen, seen_cap), seen_cap)
                return hw.capped_mean(mu, cap), f"mean tokens from {other}'s {seen_how} {seen:,.0f} at cap {seen_cap:,}"
        prior = hw.REASONING_MEAN_TOKENS
        mean = hw.capped_mean(prior.value, cap)
        return mean, f"mean tokens {mean:,.0f} = E[min(L, {cap:,})], L exponential with mean {prior.value:,.0f} ({prior.source})"

    def model_shape(self, ref: str) -> ModelShape | None:
        if self.shape and "://" in ref and ref != self.spec.base_model:
            self.warn(f"{ref}: assumed to have the base model's shape")
        return self.shape  # every stage's model is a fine-tune or merge of the base: same shape

    # ---------------------------------------------------------------- work
    def decode_seconds(self, stage: StageCommon, model: str, tokens: float, prompts: float, mean: float,
                       basis: list[str]) -> float:
        """Device-seconds (GPU x seconds, or CPU-core-seconds) to prefill `prompts` and decode `tokens`."""
        shape, gpus = self.model_shape(model), self.gpus(stage)
        if shape is None:
            return 0.0
        prompt = hw.PROMPT_TOKENS.value
        if not gpus:
            flops = tokens * (2 * shape.matmul_parameters + 4 * shape.layers * shape.q_dim * (prompt + mean / 2))
            basis.append(f"CPU decode at {hw.CPU_GENERATE_FLOPS_PER_CORE.value:.2g} FLOP/s per core "
                         f"({hw.CPU_GENERATE_FLOPS_PER_CORE.source})")
            return (flops + prompts * prompt * 2 * shape.matmul_parameters) / hw.CPU_GENERATE_FLOPS_PER_CORE.value
        gpu = self.gpu(stage)
        seqs, batched = hw.vllm_batch_defaults(gpu)
        util = float(getattr(stage, "gpu_memory_utilization", None) or hw.VLLM_GPU_MEMORY_UTILIZATION.value)
        # Each pod runs GPUs / TP engines, TP the smallest that fits (the job's own placement rule).
        chosen = engine_placement(shape, gpu, gpus=gpus, context=int(prompt) + self.cap_of(stage), util=util,
                                  tp=getattr(stage, "tensor_parallel_size", None),
                                  kv_cache_dtype=str(getattr(stage, "kv_cache_dtype", "auto")))
        tp = chosen[0] if chosen else gpus
        efficiency, source = self.decode_efficiency(gpu)
        judge = getattr(stage, "judge", None)  # a local annotate judge carries the engine knobs itself
        kv_dtype = str(getattr(stage, "kv_cache_dtype", None) or getattr(judge, "kv_cache_dtype", None) or "auto")
        rate = decode_rate(shape, gpu, tp=tp, util=util, prompt_tokens=prompt, mean_generated=mean,
                           max_num_seqs=seqs, max_num_batched_tokens=batched, efficiency=efficiency,
                           kv_dtype_bytes=1 if kv_dtype.startswith("fp8") else 2)
        mfu = hw.training_mfu(shape.parameters)
        prefill = prompts * prompt * 2 * shape.matmul_parameters / (gpu.bf16_flops * mfu.value)
        basis.append(f"decode {rate.tokens_per_second_per_gpu:,.0f} tokens/s per GPU ({gpu.product}, TP {tp}, "
                     f"{rate.batch} sequences, KV cache {kv_dtype}, {rate.bound}-bound roofline x {efficiency:.2f}: {source})")
        return tokens / rate.tokens_per_second_per_gpu + prefill

    def cap_of(self, stage: StageCommon) -> int:
        """The longest generation the stage's engine must hold."""
        p = self.params[stage.name]
        if isinstance(p, specs.SolveRateParams):
            return p.max_cap
        if isinstance(p, specs.SamplingParams):
            return p.max_tokens
        return p.judge.max_tokens if isinstance(p, specs.AnnotateParams) else 4096

    def decode_efficiency(self, gpu: hw.GpuSpec) -> tuple[float, str]:
        """The cited efficiency, or the calibration's measured fraction of the roofline on this GPU."""
        cal = self.calibration
        if cal and cal.gpu == gpu.product and cal.decode_tokens_per_second_per_gpu:
            fraction = roofline_fraction(cal, gpu)
            if fraction is not None:
                return fraction, f"measured fraction of the roofline, {cal.describe()}"
            self.warn(f"{cal.describe()}: decode measured on another model shape; using the cited efficiency")
        return hw.DECODE_EFFICIENCY.value, hw.DECODE_EFFICIENCY.source

    def train_seconds(self, stage: StageCommon, tokens: float, context: float, extra_forward: bool,
                      basis: list[str]) -> float:
        """Device-seconds of training on `tokens` tokens attending over `context` tokens each."""
        shape = self.shape
        if shape is None:
            return 0.0
        flops = tokens * (flops_per_token(shape, context) + (2 * shape.matmul_parameters if extra_forward else 0))
        if not self.gpus(stage):
            basis.append(f"CPU training at {hw.CPU_TRAIN_FLOPS_PER_CORE.value:.2g} FLOP/s per core "
                         f"({hw.CPU_TRAIN_FLOPS_PER_CORE.source})")
            return flops / hw.CPU_TRAIN_FLOPS_PER_CORE.value
        gpu, cal = self.gpu(stage), self.calibration
        if cal and cal.gpu == gpu.product and cal.sft_mfu:
            mfu, source = cal.sft_mfu, f"measured, {cal.describe()}"
        else:
            mfu, source = hw.training_mfu(shape.parameters).value, hw.training_mfu(shape.parameters).source
        basis.append(f"{flops / 1e18:,.2f} EFLOP (6N + 12·L·q·T, T = {context:,.0f}{' + 2N forward' if extra_forward else ''})"
                     f" at MFU {mfu:.2f} of {gpu.bf16_flops / 1e12:,.0f} TFLOPS ({source})")
        return flops / (gpu.bf16_flops * mfu)

    # ---------------------------------------------------------------- stages
    def count(self, name: str, key: str, inherited: _Flow, label: str, basis: list[str]) -> tuple[float, str]:
        """A stage's count: measured, hinted, or its input's (with the input's short basis)."""
        value, how = self._given(name, key)
        value, how = (value, how) if value is not None else (inherited.count, inherited.basis)
        basis.append(f"{label} {value:,.0f} ({how})")
        return value, how

    def work(self, stage: StageCommon, p: specs.Spec, basis: list[str]) -> tuple[float, float, float, _Flow]:
        """(device-seconds, serial seconds per pod, bytes each pod downloads first, output flow)."""
        name, shape, model = stage.name, self.shape, _Flow(0, "model")
        weights = weight_bytes(shape) if shape else 0.0
        if isinstance(p, specs.PrepareParams):
            n, how = self._given(name, "problems")
            n, how = (n, how) if n is not None else (hw.DEFAULT_CORPUS_PROBLEMS.value, "assumed")
            n, how = (p.max_problems, "maxProblems") if p.max_problems and n > p.max_problems else (n, how)
            cited = f" ({hw.DEFAULT_CORPUS_PROBLEMS.source})" if how == "assumed" else ""
            rate = hw.PREPARE_CPU_SECONDS_PER_PROBLEM
            basis += [f"problems {n:,.0f} {how}{cited}", f"{rate.value} CPU-s per problem ({rate.source})"]
            return n * hw.PREPARE_CPU_SECONDS_PER_PROBLEM.value, 0.0, 0.0, _Flow(n, f"{name} {how}")
        if isinstance(p, specs.AnnotateParams):
            n, how = self.count(name, "problems", self.flow(p.data), "problems", basis)
            if p.judge.backend == "openai":
                per_s = p.judge.max_concurrency / hw.JUDGE_API_SECONDS_PER_REQUEST.value
                per_s = min(per_s, p.judge.requests_per_minute / 60) if p.judge.requests_per_minute else per_s
                basis.append(f"{per_s:.2f} judge requests/s ({hw.JUDGE_API_SECONDS_PER_REQUEST.source}); "
                             "API tokens are billed by the provider, not counted here")
                return 0.0, n / per_s, 0.0, _Flow(n, how)
            mean, length = self.length(name, p.judge.model, p.judge.max_tokens)
            basis.append(length)
            return self.decode_seconds(stage, p.judge.model, n * mean, n, mean, basis), 0.0, weights, _Flow(n, how)
        if isinstance(p, specs.SolveRateParams):
            inflow = self.flow(p.data)
            n, how = self.count(name, "problems", inflow, "problems", basis)
            corpus, corpus_how = n, how
            band = p.select.difficulty if p.select else None
            if band and how not in ("hinted", "measured"):  # the job filters before sampling
                share = hw.difficulty_share(band.min, band.max)
                n, how = n * share.value, f"{how} x difficulty share {share.value:g}"
                basis.append(f"problems {n:,.0f} after select.difficulty [{band.min or 1}, {band.max or 10}] "
                             f"({share.source})")
            mean, length = self.length(name, p.model, p.max_cap)  # sampled once, at the largest cap
            basis += [f"{n * p.samples:,.0f} samples (k = {p.samples})", length]
            device = self.decode_seconds(stage, p.model, n * p.samples * mean, n, mean, basis)
            grading = n * p.samples / hw.GRADINGS_PER_CPU_SECOND.value / self.cpus(stage)
            return device, grading / stage.shards, weights, _Flow(n, how, mean, corpus, corpus_how)
        if isinstance(p, specs.CurateParams):
            return self.curate(stage, p, basis)
        if isinstance(p, specs.SftParams):
            inflow = self.flow(p.data)
            rows, _ = self.count(name, "rows", inflow, "chains", basis)
            chain, _ = self._given(name, "mean_tokens")  # a hint for data given by URI
            mean = min(chain if chain is not None else inflow.tokens, p.max_length)
            world = stage.nodes * max(1, self.gpus(stage))
            block = p.max_length if p.packing else mean
            per_step = p.per_device_batch_size * world * p.gradient_accumulation_steps * block
            tokens = rows * mean * p.epochs * p.passes
            tokens = min(tokens, p.max_steps * per_step) if p.max_steps else tokens
            steps = math.ceil(tokens / per_step)
            basis.append(f"{tokens:,.0f} tokens = chains x {mean:,.0f} tokens x {p.passes} passes x {p.epochs:g} "
                         f"epochs{', capped by maxSteps' if p.max_steps else ''}; {steps:,} optimizer steps")
            # each checkpoint uploads bf16 weights + fp32 Adam state (14 bytes/parameter), split over the nodes
            uploads = (steps // p.save_steps) * 14 * (shape.parameters if shape else 0) / stage.nodes + weights
            return (self.train_seconds(stage, tokens, mean, False, basis),
                    uploads / hw.store_rate(self.cpus(stage), upload=True), weights, model)
        if isinstance(p, specs.GrpoParams):
            return self.grpo(stage, p, basis)
        if isinstance(p, specs.MergeParams):
            inputs = len(p.models) * weights
            out = (shape.parameters if shape else 0) * {"float32": 4}.get(p.dtype, 2)
            cpus = self.cpus(stage)
            seconds = (inputs / hw.store_rate(cpus) + inputs / hw.MERGE_INPUT_BYTES_PER_S.value
                       + out / hw.store_rate(cpus, upload=True))
            basis.append(f"{inputs / hw.GB:,.1f} GB in, {out / hw.GB:,.1f} GB out; merge at "
                         f"{hw.MERGE_INPUT_BYTES_PER_S.value / hw.GB:.2f} GB/s of input ({hw.MERGE_INPUT_BYTES_PER_S.source})")
            return 0.0, seconds, 0.0, model
        if isinstance(p, specs.EvalParams):
            given, how = self._given(name, "problems")
            problems = given if given is not None else \
                sum(hw.BENCHMARK_PROBLEMS.get(b, hw.UNKNOWN_BENCHMARK_PROBLEMS).value for b in p.benchmarks)
            basis.append(f"{problems:,.0f} problems ({how or ', '.join(p.benchmarks)}) x {p.samples} samples "
                         f"x {len(p.models)} models")
            device = 0.0
            for ref in p.models:
                mean, length = self.length(name, ref, p.max_tokens)
                basis.append(f"{ref}: {length}")
                device += self.decode_seconds(stage, ref, problems * p.samples * mean, problems, mean, basis)
            grading = problems * p.samples * len(p.models) / hw.GRADINGS_PER_CPU_SECOND.value / self.cpus(stage)
            return device, grading / stage.shards, weights * len(p.models), _Flow(0, "results")
        raise TypeError(f"no cost model for {type(p).__name__}")  # a new stage type needs a branch here

    def curate(self, stage: StageCommon, p: specs.CurateParams, basis: list[str]) -> tuple[float, float, float, _Flow]:
        inflow, eff = self.flow(p.data), p.effective()
        rows, how = self._given(stage.name, "rows")
        if rows is None:
            fraction, how = self._given(stage.name, "keep_fraction")
            if fraction is None:
                cited, how = hw.keep_fraction_prior(eff)
                fraction = cited.value
                basis.append(f"keepFraction {fraction:g} ({cited.source})")
                # The cited set sizes are fractions of the whole corpus, also when sampling saw a filtered part.
                base = inflow.corpus or inflow.count
                rows = min(inflow.count, base * fraction)
                source = inflow.corpus_basis if inflow.corpus else inflow.basis
                how = f"{source} x keepFraction {fraction:g} {how}"
            else:
                rows, how = inflow.count * fraction, f"{inflow.basis} x keepFraction {fraction:g} {how}"
        basis.append(f"rows {rows:,.0f} ({how})")
        chain, chain_how = self._given(stage.name, "mean_tokens")
        if chain is None and eff.keep != "prompt":
            solution = eff.keep == "solution"
            chain = (hw.SOLUTION_TOKENS.value if solution else inflow.tokens) + hw.PROMPT_TOKENS.value
            chain_how = (f"a solution, {hw.SOLUTION_TOKENS.source}" if solution else
                         f"{p.data}'s mean sample") + f" + a prompt, {hw.PROMPT_TOKENS.source}"
        if chain:
            basis.append(f"chain tokens {chain:,.0f} ({chain_how})")
        basis.append(f"{hw.CURATE_CPU_SECONDS_PER_ROW.value} CPU-s per input row ({hw.CURATE_CPU_SECONDS_PER_ROW.source})")
        return inflow.count * hw.CURATE_CPU_SECONDS_PER_ROW.value, 0.0, 0.0, _Flow(rows, how, chain or 0.0)

    def grpo(self, stage: StageCommon, p: specs.GrpoParams, basis: list[str]) -> tuple[float, float, float, _Flow]:
        shape, gpus, model = self.shape, self.gpus(stage), _Flow(0, "model")
        prompts, _ = self.count(stage.name, "problems", self.flow(p.data), "prompts", basis)
        world = stage.nodes * max(1, gpus)
        per_round = p.per_device_batch_size * world * p.gradient_accumulation_steps
        completions = prompts * p.num_generations
        completions = min(completions, p.max_steps * per_round) if p.max_steps else completions
        mean, length = self.length(stage.name, p.model, p.max_completion_tokens)
        rounds = completions / per_round
        basis += [f"{completions:,.0f} completions (numGenerations {p.num_generations}), {rounds:,.0f} rounds", length]
        prompt = hw.PROMPT_TOKENS.value
        train = self.train_seconds(stage, completions * (prompt + mean), prompt + mean, p.use_vllm and gpus > 0, basis)
        weights = weight_bytes(shape) if shape else 0.0
        if shape is None or not gpus:
            return train + self.decode_seconds(stage, p.model, completions * mean, completions, mean, basis), 0.0, weights, model
        gpu, cal = self.gpu(stage), self.calibration
        same = cal and (cal.grpo_parameters is None or abs(cal.grpo_parameters / shape.parameters - 1) < 0.01)
        if cal and same and cal.gpu == gpu.product and cal.grpo_completion_tokens_per_second_per_gpu:
            rate = cal.grpo_completion_tokens_per_second_per_gpu
            basis.append(f"GRPO {rate:,.0f} completion tokens/s per GPU, measured ({cal.describe()})")
            return completions * mean / rate, 0.0, weights, model
        # TRL colocate: each TP group generates perDeviceBatchSize x stepsPerGeneration (= gradient accumulation)
        # sequences per rank in one call, so a round lasts as long as its longest sequence.
        tp, util = p.vllm_tensor_parallel_size, p.vllm_gpu_memory_utilization
        batch = p.per_device_batch_size * p.gradient_accumulation_steps * tp
        efficiency, source = self.decode_efficiency(gpu)
        roll = decode_rate(shape, gpu, tp=tp, util=util, prompt_tokens=prompt, mean_generated=mean, max_num_seqs=batch,
                           max_num_batched_tokens=int(hw.TRL_COLOCATE_BATCHED_TOKENS.value), efficiency=efficiency)
        longest = hw.expected_max(hw.fit_uncapped_mean(mean, p.max_completion_tokens), p.max_completion_tokens, roll.batch)
        step = roll.batch / (roll.tokens_per_second_per_gpu * tp)  # seconds per decode step of the TP group
        basis.append(f"rollouts: {roll.batch} sequences per vLLM (TP {tp}, util {util:g}), each round "
                     f"{longest:,.0f} decode steps (its longest sequence) x {step * 1e3:,.1f} ms ({roll.bound}-bound "
                     f"roofline x {efficiency:.2f}: {source})")
        if not roll.fits:
            basis.append("vLLM does not fit as configured (see the problems): costed as if it did")
        return train + rounds * longest * step * world * (batch / roll.batch), 0.0, weights, model

    # ---------------------------------------------------------------- assembly
    def stage(self, stage: StageCommon) -> StageForecast:
        p, basis = self.params[stage.name], list[str]()
        device, serial, fetch, flow = self.work(stage, p, basis)
        self.flows[stage.name] = flow
        gpus, cpus = self.gpus(stage), self.cpus(stage)
        pods = stage.shards * stage.nodes
        wall = hw.POD_START_SECONDS.value + fetch / hw.store_rate(cpus) + serial + device / (pods * (gpus or cpus))
        gpu_hours = pods * gpus * wall / 3600
        measured = self.measured.get(stage.name, NOT_MEASURED).gpu_hours
        if measured is not None and gpus:
            gpu_hours, wall = measured, measured * 3600 / (pods * gpus)
            basis.insert(0, f"GPU-hours {measured:,.2f} measured")
        pool = self.spec.node_pools.get(stage.pool)
        cpu_hours = pods * cpus * wall / 3600
        usd = gpu_hours * (pool.gpu_hour_usd if pool else 0) + cpu_hours * (pool.cpu_hour_usd if pool else 0)
        if fetch >= 1e8:
            basis.append(f"each pod downloads {fetch / hw.GB:,.1f} GB first at {hw.store_rate(cpus) / hw.GB:.2f} GB/s "
                         f"({hw.STORE_DOWNLOAD_BYTES_PER_CORE_S.source}; {hw.STORE_NETWORK_BYTES_PER_S.source})")
        return StageForecast(stage.name, stage.type, stage.pool, pods, gpus, rounded(gpu_hours), rounded(cpu_hours),
                             rounded(usd), round(wall), tuple(basis))


def _builder(recipe: FathomRecipe, calibration: hw.Calibration | None,
             model: ModelShape | ModelInfo | Mapping[str, Any] | None,
             hints: Mapping[str, Any] | None, measured: Mapping[str, Any] | None) -> tuple[_Builder, str]:
    # The recipe's own modelInfo and estimate hints unless the caller passes others.
    shape, shape_basis = _shape(model if model is not None else recipe.spec.model_info, recipe.spec.base_model)
    given = {s.name: s.estimate for s in recipe.spec.stages if s.estimate is not None} if hints is None else hints
    builder = _Builder(recipe, calibration, shape, HINTS.validate_python(dict(given)),
                       MEASURED.validate_python(dict(measured or {})))
    if shape is None:
        builder.warnings.append(shape_basis)
    return builder, shape_basis


def check_recipe(recipe: FathomRecipe, model: ModelShape | ModelInfo | Mapping[str, Any] | None = None) -> list[StageProblem]:
    """Every stage that cannot fit on its GPUs (or host, for merge), with the field path to change."""
    builder, _ = _builder(recipe, None, model, None, None)
    found = []
    for i, stage in enumerate(recipe.spec.stages):
        gpus = builder.gpus(stage)
        if builder.shape is None or not (gpus or isinstance(builder.params[stage.name], specs.MergeParams)):
            continue
        memory = hw.quantity(stage.resources.memory if stage.resources else None)
        for problem in check_stage(builder.params[stage.name], builder.shape, builder.gpu(stage), name=stage.name,
                                   gpus=gpus, nodes=stage.nodes, memory_bytes=memory, placement=stage):
            found.append(StageProblem(stage.name, f"spec.stages[{i}].{problem.field}", problem))
    return found


def forecast(recipe: FathomRecipe, calibration: hw.Calibration | None = None,
             model: ModelShape | ModelInfo | Mapping[str, Any] | None = None, hints: Mapping[str, Any] | None = None,
             measured: Mapping[str, Any] | None = None) -> Forecast:
    """The recipe's forecast. hints/measured: {stage: {problems, keepFraction, meanTokens}} and
    {stage: {problems, rows, meanTokens, gpuHours}} (plain dicts or the api.hints models; bad values
    raise pydantic's ValidationError with the stage and field in its location)."""
    builder, shape_basis = _builder(recipe, calibration, model, hints, measured)
    deps = dag.dependencies(recipe.spec)
    rows: dict[str, StageForecast] = {}
    for level in dag.levels(deps):  # inputs before the stages that read them
        for name in level:
            rows[name] = builder.stage(builder.stages[name])
    finish: dict[str, float] = {}
    for name, row in rows.items():  # dependencies were visited first
        finish[name] = max((finish[d] for d in deps.get(name, [])), default=0.0) + row.wall_seconds
    ordered = tuple(rows[s.name] for s in recipe.spec.stages)
    return Forecast(recipe.metadata.name, ordered, rounded(sum(r.gpu_hours for r in ordered)),
                    rounded(sum(r.usd for r in ordered)), max(finish.values(), default=0.0), recipe.spec.budget_usd,
                    tuple(builder.warnings), tuple(check_recipe(recipe, builder.shape)), shape_basis)
