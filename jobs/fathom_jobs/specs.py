"""Each stage type's parameters, and the one JSON document a stage's Job receives.

These models are shared by both sides: the operator embeds them in the FathomRecipe schema (so the
CRD, `fathom validate` and the job all agree on one definition), and the job reads them back from
the `FATHOM_JOB_SPEC` document. Defaults are the Fathom-R1 seeds' settings (the README's
stage table).

Reference fields (`model`, `data`, `models[].model`, a local judge's `model`) hold a stage name,
`base`, or a store URI (`s3://`, `file://`, `hf://`) in a recipe; the operator replaces stage names
with store URIs before the job sees them. They are typed with `Ref`, which records the artifact
kinds the field accepts so the operator can check the DAG without a list of special cases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator
from pydantic.alias_generators import to_camel

# What a stage hands to the next one. A reference field names the kinds it accepts.
MODEL = "model"
PROBLEMS = "problems"  # prepared (and possibly annotated) problems with reference answers
SAMPLES = "samples"  # per-problem solve rates with every sampled chain
PROMPTS = "prompts"  # curated prompts + answers (RL sets)
CHAINS = "chains"  # curated prompt/completion pairs (SFT sets)
RESULTS = "results"  # evaluation tables

SEED_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
STORE_SCHEMES = ("s3://", "file://", "hf://")
# Problem sets shipped in the jobs package (fathom_jobs/data), usable by name wherever a corpus or
# benchmark is expected. AIME25, HMMT25 and GPQA-Diamond are evaluation sets.
SHIPPED_DATASETS = ("aime25", "hmmt25", "gpqa-diamond", "aime24", "amc23", "gsm8k-sample")


@dataclass(frozen=True)
class Ref:
    """Marks a field as a reference to another stage's output (or a store URI)."""

    kinds: tuple[str, ...]


ModelRef = Annotated[str, Ref((MODEL,)), Field(min_length=1)]


class Spec(BaseModel):
    """Base of every spec model: camelCase in YAML/JSON, unknown fields rejected."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")
    # Fields that change how a stage runs or reports, never what it produces: left out of its
    # fingerprint, so editing one reruns nothing (fathom_jobs.memo.output_params).
    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset()


# --------------------------------------------------------------------------------------- prepare
class CorpusSource(Spec):
    uri: str = Field(
        description="Corpus location: hf://org/name[@revision], s3://, file:// (jsonl or parquet), or a shipped set (aime24, amc23, ...)."
    )
    subset: str | None = Field(None, description="Dataset configuration (hub datasets).")
    split: str = "train"
    where: dict[str, list[str]] = Field(
        default_factory=dict, description="Keep rows whose column value is in the list, e.g. {source: [olympiads]}."
    )
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="Column mapping onto problem/answer/solution/source, e.g. {problem: question}.",
    )


class DedupParams(Spec):
    exact: bool = True
    near_threshold: float = Field(0.85, gt=0, le=1, description="Jaccard similarity above which problems are near-duplicates.")
    ngram: int = Field(5, gt=0, description="Word n-gram size for near-duplicate detection.")


class PrepareParams(Spec):
    sources: list[CorpusSource] = Field(min_length=1)
    decontaminate: list[str] = Field(
        default_factory=lambda: ["aime25", "hmmt25", "gpqa-diamond"],
        description="Evaluation sets (benchmark names or store URIs) whose problems must not be trained on.",
    )
    contamination_ngram: int = Field(13, gt=0, description="Word n-gram length for contamination matches.")
    dedup: DedupParams = Field(default_factory=DedupParams)
    require_answer: bool = Field(True, description="Drop problems without a checkable reference answer.")
    max_problems: int | None = Field(None, gt=0, description="Cap on the output size (after filtering).")


# -------------------------------------------------------------------------------------- annotate
class Judge(Spec):
    backend: Literal["openai", "vllm", "transformers"] = "openai"
    endpoint: str | None = Field(None, description="OpenAI-compatible base URL (backend openai).")
    model: str = Field(
        "o3-mini",
        description="API model name (openai), or a model reference - stage name, base or URI (vllm, transformers).",
    )
    api_key_secret: str | None = Field(None, description="Secret with OPENAI_API_KEY, mounted with envFrom.")
    max_concurrency: int = Field(16, gt=0)
    requests_per_minute: int | None = Field(None, gt=0)
    max_tokens: int = Field(4096, gt=0)
    temperature: float | None = Field(None, ge=0, le=2)
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="Local vLLM judge: share of each GPU's memory an engine takes (weights, KV cache).")
    tensor_parallel_size: int | None = Field(
        None, gt=0, description="Local vLLM judge: GPUs per engine; the pod runs its GPUs / this many engines. "
                                "Default: the smallest that fits the weights and the KV cache.")
    kv_cache_dtype: Literal["auto", "fp8"] = Field(
        "auto", description="Local vLLM judge: KV cache element type (auto: the model's; fp8 halves it).")
    enable_prefix_caching: bool = Field(True, description="Local vLLM judge: reuse the KV cache of shared prompt prefixes.")

    def dynamic_references(self) -> dict[str, tuple[str, ...]]:
        """A local judge's `model` is a model reference; an API judge's is just a name."""
        return {} if self.backend == "openai" else {"model": (MODEL,)}


class AnnotateParams(Spec):
    data: Annotated[str, Ref((PROBLEMS,))]
    judge: Judge = Field(default_factory=Judge)
    prompt: str | None = Field(None, description="Rating prompt template with {problem}; the default asks for 1-10.")


# ------------------------------------------------------------------------------------ solve-rate
class SamplingParams(Spec):
    samples: int = Field(8, gt=0, description="Chains sampled per problem (k).")
    max_tokens: int = Field(6000, gt=0, description="Token cap; a chain that hits it counts as failed.")
    temperature: float = Field(0.6, ge=0, le=2)
    top_p: float = Field(0.95, gt=0, le=1)
    seed: int = 0
    engine: Literal["vllm", "transformers"] = "vllm"
    system_prompt: str = SEED_SYSTEM_PROMPT
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="vLLM: share of each GPU's memory an engine takes (weights, activations, KV cache).")
    tensor_parallel_size: int | None = Field(
        None, gt=0, description="vLLM: GPUs per engine; each pod runs gpusPerNode / tensorParallelSize engines side by "
                                "side (data parallel). Default: the smallest power of two whose GPUs hold the weights "
                                "and the KV cache of 4 sequences of maxTokens + 4,096 tokens.")
    kv_cache_dtype: Literal["auto", "fp8"] = Field(
        "auto", description="vLLM: KV cache element type; auto is the model's (bf16), fp8 halves the cache.")
    enable_prefix_caching: bool = Field(
        True, description="vLLM: reuse the KV cache of shared prompt prefixes (the k samples of a problem share one).")

    # Where and how fast vLLM runs, not what it samples: changing them reuses finished eval parts.
    PLACEMENT_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"gpu_memory_utilization", "tensor_parallel_size", "enable_prefix_caching"})


# ---------------------------------------------------------------------------------------- curate
class SolveRateBand(Spec):
    """A band of solve rates; `above`/`below` are exclusive, `atLeast`/`atMost` inclusive."""

    above: float | None = None
    at_least: float | None = None
    below: float | None = None
    at_most: float | None = None
    cap: PositiveInt | None = Field(
        None, description="The token cap whose solve rates the band reads (one of the solve-rate stage's "
        "maxTokens); default: the largest cap the samples carry.")

    def contains(self, rate: float) -> bool:
        return ((self.above is None or rate > self.above) and (self.at_least is None or rate >= self.at_least)
                and (self.below is None or rate < self.below) and (self.at_most is None or rate <= self.at_most))

    def reachable(self, correct: int, drawn: int, samples: int) -> bool:
        """Whether a problem with `correct` of `drawn` chains right can still end in the band once all
        `samples` are drawn, whatever the remaining chains' outcomes."""
        return any(self.contains(final / samples) for final in range(correct, correct + samples - drawn + 1))


class DifficultyBand(Spec):
    """Judge ratings 1-10, inclusive bounds. A band leaves out problems the judge did not rate."""

    min: int | None = None
    max: int | None = None
    include_unrated: bool = Field(False, description="Also select problems the judge did not rate (difficulty null).")

    def contains(self, difficulty: int | None) -> bool:
        if difficulty is None:
            return self.include_unrated
        return (self.min is None or difficulty >= self.min) and (self.max is None or difficulty <= self.max)


class Selection(Spec):
    difficulty: DifficultyBand | None = None
    solve_rate: SolveRateBand | None = None


# The seeds' sets. The two model cards disagree on two bands, so both readings are offered:
# curriculum 0.2 < solve < 0.6 (`curriculum`) or < 0.7 (`curriculum-wide`, the Fathom-R1-14B card's
# "between 0.2 and 0.7"); shortest chains 0.1 <= solve <= 0.4 (`shortest-chains`) or 0 < solve <= 0.4
# (`shortest-chains-wide`, the card's "0 < pass_rate <= 0.4"). Caps: the SFT sets read the 16k rates
# (SFT trains at 16,384 tokens); the RL set the 6k rates (GRPO completes at 6,000). A preset's cap
# applies when the samples carry several caps; samples with one cap are selected at that cap.
CURATE_PRESETS: dict[str, dict[str, Any]] = {
    # Fathom-R1-14B-v0.6: medium problems (rated difficulty >= 5; unrated ones left out), easy -> hard.
    "curriculum": {
        "select": {"difficulty": {"min": 5}, "solveRate": {"above": 0.2, "below": 0.6, "cap": 16384}},
        "order": "easy-to-hard",
        "keep": "shortest-correct-chain",
    },
    "curriculum-wide": {
        "select": {"difficulty": {"min": 5}, "solveRate": {"above": 0.2, "below": 0.7, "cap": 16384}},
        "order": "easy-to-hard",
        "keep": "shortest-correct-chain",
    },
    # Fathom-R1-14B-RS: the GRPO length-compression prompts. Never-solved problems are left out: a group
    # of all-zero rewards has no advantage and so no gradient (the seeds' set "ensures minimum reward").
    "rl-compression": {"select": {"solveRate": {"above": 0.0, "atMost": 0.5, "cap": 6000}}, "order": "none",
                       "keep": "prompt"},
    # Fathom-R1-14B-v0.4: the shortest correct chain of hard-ish problems.
    "shortest-chains": {
        "select": {"solveRate": {"atLeast": 0.1, "atMost": 0.4, "cap": 16384}},
        "order": "none",
        "keep": "shortest-correct-chain",
    },
    "shortest-chains-wide": {
        "select": {"solveRate": {"above": 0.0, "atMost": 0.4, "cap": 16384}},
        "order": "none",
        "keep": "shortest-correct-chain",
    },
}
CuratePreset = Literal["curriculum", "curriculum-wide", "rl-compression", "shortest-chains", "shortest-chains-wide"]
# One description for both stage types' `select`, so the CRD's merged stage schema keeps it typed.
SELECT_DESCRIPTION = (
    "Problems to take: a `difficulty` band (ratings 1-10; unrated problems are left out unless `includeUnrated`) "
    "and, in curate only, a `solveRate` band read at a `cap` (default: the largest cap the samples carry). "
    "solve-rate applies its `difficulty` band before sampling.")


class SolveRateParams(SamplingParams):
    """Sampled once at the largest cap; every chain graded at each cap (see stages/solve_rate.py)."""

    data: Annotated[str, Ref((PROBLEMS,))]
    model: ModelRef = "base"
    max_tokens: PositiveInt | Annotated[list[PositiveInt], Field(min_length=1)] = Field(  # type: ignore[assignment]
        6000,
        description="Token cap, or several caps (e.g. [6000, 16384]): chains are sampled once at the largest and "
        "graded at each; a chain is correct at cap c when it is correct and ended within c tokens.",
    )
    select: Selection | None = Field(None, description=SELECT_DESCRIPTION)
    samples_per_round: int = Field(
        2, gt=0, description="Adaptive sampling: chains drawn per problem per round while `stopOutside` has bands.")
    stop_outside: list[SolveRateBand] | None = Field(
        None,
        description="Adaptive sampling: stop sampling a problem once, whatever its remaining chains, its solve rate "
        "can fall in none of these bands (each at its `cap`); it is written with `decided: outside`. Left out, the "
        "operator fills in the solveRate bands of the curate stages that read this stage; [] samples every problem "
        "fully.",
    )

    @field_validator("select")
    @classmethod
    def _difficulty_only(cls, value: Selection | None) -> Selection | None:
        if value is not None and value.solve_rate is not None:
            raise ValueError("solve-rate selects problems before sampling: only `difficulty` applies")
        return value

    def caps(self) -> list[int]:
        """The token caps, ascending; chains are sampled at the last."""
        return sorted(set(self.max_tokens if isinstance(self.max_tokens, list) else [self.max_tokens]))

    @property
    def max_cap(self) -> int:
        return self.caps()[-1]


class CurateParams(Spec):
    data: Annotated[str, Ref((SAMPLES,))]
    preset: CuratePreset | None = Field(
        None, description="The seeds' sets; explicit select/order/keep override the preset's."
    )
    select: Selection | None = Field(None, description=SELECT_DESCRIPTION)
    order: Literal["easy-to-hard", "hard-to-easy", "shuffle", "none"] | None = None
    keep: Literal["shortest-correct-chain", "all-correct-chains", "solution", "prompt"] | None = Field(
        None, description="What each selected problem contributes: sampled chains, its reference solution, or the prompt alone."
    )
    max_chain_tokens: int | None = Field(
        None, gt=0, description="Leave out sampled chains longer than this many tokens (counted, never truncated); "
        "SFT's maxLength also holds the prompt.")
    seed: int = 0

    def effective(self) -> CurateParams:
        """The preset's choices filled in under the explicit ones."""
        base = CURATE_PRESETS.get(self.preset or "", {})
        mine = self.model_dump(by_alias=True, exclude_none=True, include=set(CurateParams.model_fields))
        merged = {**base, **mine}
        merged.setdefault("select", {})
        merged.setdefault("order", "none")
        merged.setdefault("keep", "shortest-correct-chain")
        return CurateParams.model_validate(merged)

    def output_kind(self) -> str:
        return PROMPTS if self.effective().keep == "prompt" else CHAINS

    def selection_cap(self, caps: list[int]) -> int | None:
        """The cap whose solve rates this stage selects and orders by, given the caps its samples carry
        (ascending; [] for samples without per-cap rates: None, the `solve_rate` column). An explicit
        `cap` must be carried; a preset's cap applies when several are; default the largest."""
        select = self.effective().select
        cap = select.solve_rate.cap if select and select.solve_rate else None
        explicit = self.select is not None and self.select.solve_rate is not None
        if cap is None or (not explicit and len(caps) <= 1):
            return caps[-1] if caps else None
        if cap not in caps:
            carried = f"caps {', '.join(map(str, caps))}" if caps else "no per-cap solve rates"
            if explicit:
                raise ValueError(f"select.solveRate.cap {cap} is not a cap of the samples (they carry {carried})")
            raise ValueError(f"preset {self.preset} reads the solve rates at cap {cap} but the samples carry {carried}; "
                             "give select.solveRate a cap")
        return cap


# -------------------------------------------------------------------------------------- training
class TrainingParams(Spec):
    RUNTIME_FIELDS = frozenset({"keep_checkpoints", "collective_timeout_minutes", "wandb_api_key_secret", "report_to"})
    model: ModelRef = "base"
    learning_rate: float = Field(1e-5, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    per_device_batch_size: int = Field(1, gt=0)
    gradient_accumulation_steps: int = Field(8, gt=0)
    gradient_checkpointing: bool = True
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps (default: full passes).")
    deepspeed: Literal["zero3", "zero2", "none"] = "zero3"
    liger: bool = Field(False, description="Use Liger kernels (fused RMSNorm/RoPE/cross-entropy).")
    save_steps: int = Field(100, gt=0, description="Checkpoint to the store every N steps (the final model is saved once, not as a checkpoint).")
    keep_checkpoints: int = Field(2, gt=0)
    collective_timeout_minutes: int = Field(
        120, gt=0, description="How long a process waits for the others at a collective (the torch.distributed timeout): "
        "it must cover the slowest node's checkpoint upload to the store.")
    wandb_api_key_secret: str | None = Field(
        None, description="Secret with WANDB_API_KEY (optionally WANDB_PROJECT, WANDB_ENTITY, WANDB_BASE_URL), mounted with envFrom; reportTo: wandb needs it.")
    report_to: Literal["tensorboard", "wandb", "none"] = Field(
        "tensorboard", description="Training curves: TensorBoard event files under the stage's logs/ in the store, "
        "Weights & Biases (key from wandbApiKeySecret), or none.")
    seed: int = 42

    @field_validator("report_to")
    @classmethod
    def _wandb_needs_a_key(cls, value: str, info: Any) -> str:
        if value == "wandb" and not info.data.get("wandb_api_key_secret"):
            raise ValueError("wandb needs wandbApiKeySecret (a Secret with WANDB_API_KEY)")
        return value


class SftParams(TrainingParams):
    data: Annotated[str, Ref((CHAINS,))]
    max_length: int = Field(16384, gt=0)
    passes: int = Field(1, gt=0, description="Iterative curriculum: passes over the easy->hard order, never shuffled.")
    epochs: float = Field(1.0, gt=0, description="Epochs per pass.")
    packing: bool = Field(True, description="Padding-free packing of sequences.")


class LengthReward(Spec):
    """Bonus for shorter correct chains among the correct chains of the same prompt (Kimi-1.5 style)."""

    kind: Literal["kimi", "none"] = "kimi"
    weight: float = Field(0.5, ge=0, description="Scale of the length bonus relative to a correctness reward of 1.")


class GrpoParams(TrainingParams):
    data: Annotated[str, Ref((PROMPTS, CHAINS, PROBLEMS))]
    learning_rate: float = Field(1e-6, gt=0)
    max_completion_tokens: int = Field(6000, gt=0)
    num_generations: int = Field(8, gt=1)
    temperature: float = Field(0.6, gt=0, le=2)
    loss_type: Literal["dapo", "grpo", "bnpo", "dr_grpo"] = "dapo"
    beta: float = Field(0.0, ge=0, description="KL coefficient (0 = no reference model).")
    length_reward: LengthReward = Field(default_factory=LengthReward)
    use_vllm: bool = Field(True, description="vLLM colocated generation (GPU); transformers generation otherwise.")
    # TRL's own defaults (0.3, TP 1, no sleep) give vLLM 24 GB of an 80 GB GPU: less than 14B bf16 weights.
    vllm_gpu_memory_utilization: float = Field(
        0.5, gt=0, lt=1, description="Share of each GPU the colocated vLLM engine reserves (weights + KV cache).")
    vllm_tensor_parallel_size: int = Field(
        1, gt=0, description="GPUs one colocated vLLM engine spans; must divide the pod's GPUs.")
    vllm_enable_sleep_mode: bool = Field(
        True, description="Offload vLLM's weights and KV cache while the trainer steps, so both fit on one GPU.")
    system_prompt: str = SEED_SYSTEM_PROMPT


# ----------------------------------------------------------------------------------------- merge
class WeightedModel(Spec):
    model: ModelRef
    weight: float


class MergeParams(Spec):
    method: Literal["linear"] = "linear"
    models: list[WeightedModel] = Field(min_length=2)
    normalize: bool = True
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"


# ------------------------------------------------------------------------------------------ eval
class EvalParams(SamplingParams):
    models: list[ModelRef] = Field(min_length=1)
    benchmarks: list[str] = Field(
        default_factory=lambda: ["aime25", "hmmt25", "gpqa-diamond"],
        min_length=1,
        description="Benchmark names (aime25, hmmt25, gpqa-diamond, aime24, amc23) or store URIs of jsonl files.",
    )
    samples: int = Field(64, gt=0)
    max_tokens: int = Field(16384, gt=0)
    gpqa_shuffle: bool = Field(True, description="Shuffle GPQA choices per question (the shipped answers are all A).")
    prompt_style: Literal["default", "limo"] = Field(
        "default", description="default: systemPrompt as the system message, the problem as the user message. "
                               "limo: LIMO's evaluation prompt (GAIR-NLP/LIMO eval/prompts/qwen-instruct/*.py with "
                               "eval.py --surround_with_messages): its system prompt and the problem stripped.")

    @model_validator(mode="after")
    def _limo_prompt_is_fixed(self) -> EvalParams:
        if self.prompt_style == "limo" and self.system_prompt != SEED_SYSTEM_PROMPT:
            raise ValueError("promptStyle limo sends LIMO's own system prompt; remove systemPrompt")
        return self


# ------------------------------------------------------------------------------- the Job's input
class StorageOptions(Spec):
    endpoint: str | None = None
    region: str | None = None
    path_style: bool | None = None


class JobSpec(Spec):
    """Everything one attempt of one stage needs; passed as JSON in FATHOM_JOB_SPEC."""

    recipe: str
    namespace: str
    stage: str
    type: str = Field(description="The stage type (a row of fathom_jobs.registry).")
    attempt: int = Field(0, ge=0)
    params: dict[str, Any] = Field(description="The stage's parameters with references resolved to URIs.")
    output: str = Field(description="Store URI of this stage's output prefix.")
    storage: StorageOptions = Field(default_factory=StorageOptions)
    resume_from: str | None = Field(None, description="Newest complete checkpoint of an earlier attempt.")
    shards: int = Field(1, gt=0)
    nodes: int = Field(1, gt=0)
    gpus_per_node: int = Field(0, ge=0)

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        from .registry import NAMES  # the registry imports this module

        if value not in NAMES:
            raise ValueError(f"unknown stage type {value!r}; expected one of {', '.join(NAMES)}")
        return value

    def typed_params(self) -> Spec:
        from .registry import stage_type

        return stage_type(self.type).params.model_validate(self.params)
