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
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
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


class SolveRateParams(SamplingParams):
    data: Annotated[str, Ref((PROBLEMS,))]
    model: ModelRef = "base"


# ---------------------------------------------------------------------------------------- curate
class SolveRateBand(Spec):
    """A band of solve rates; `above`/`below` are exclusive, `atLeast`/`atMost` inclusive."""

    above: float | None = None
    at_least: float | None = None
    below: float | None = None
    at_most: float | None = None


class DifficultyBand(Spec):
    min: int | None = None
    max: int | None = None


class Selection(Spec):
    difficulty: DifficultyBand | None = None
    solve_rate: SolveRateBand | None = None


CURATE_PRESETS: dict[str, dict[str, Any]] = {
    # Fathom-R1-14B-v0.6: medium problems, easy -> hard.
    "curriculum": {
        "select": {"difficulty": {"min": 5}, "solveRate": {"above": 0.2, "below": 0.6}},
        "order": "easy-to-hard",
        "keep": "shortest-correct-chain",
    },
    # Fathom-R1-14B-RS: the GRPO length-compression prompts.
    "rl-compression": {"select": {"solveRate": {"atLeast": 0.0, "atMost": 0.5}}, "order": "none", "keep": "prompt"},
    # Fathom-R1-14B-v0.4: the shortest correct chain of hard-ish problems.
    "shortest-chains": {
        "select": {"solveRate": {"atLeast": 0.1, "atMost": 0.4}},
        "order": "none",
        "keep": "shortest-correct-chain",
    },
}


class CurateParams(Spec):
    data: Annotated[str, Ref((SAMPLES,))]
    preset: Literal["curriculum", "rl-compression", "shortest-chains"] | None = Field(
        None, description="The seeds' sets; explicit select/order/keep override the preset's."
    )
    select: Selection | None = None
    order: Literal["easy-to-hard", "hard-to-easy", "shuffle", "none"] | None = None
    keep: Literal["shortest-correct-chain", "all-correct-chains", "solution", "prompt"] | None = Field(
        None, description="What each selected problem contributes: sampled chains, its reference solution, or the prompt alone."
    )
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


# -------------------------------------------------------------------------------------- training
class TrainingParams(Spec):
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
    save_steps: int = Field(100, gt=0, description="Checkpoint to the store every N steps.")
    keep_checkpoints: int = Field(2, gt=0)
    seed: int = 42


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
