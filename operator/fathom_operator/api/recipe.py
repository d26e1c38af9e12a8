"""The FathomRecipe resource: spec models. The CRD schema is generated from these (see crd.py).

A stage is its common placement fields plus its type's parameter model from `fathom_jobs.specs`,
flattened into one YAML mapping as users write it:
`{name: sft-shortest, type: sft, model: base, data: shortest-set, pool: h100, nodes: 2}`.
"""

from __future__ import annotations

import functools
import operator
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

from pydantic import Field, create_model

from fathom_jobs import registry, specs
from fathom_jobs.specs import Spec

from .hints import EstimateHints, ModelInfo

GROUP = "fathom.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FathomRecipe"
PLURAL = "fathomrecipes"
SINGULAR = "fathomrecipe"
SHORT_NAMES = ["frecipe"]
BASE = "base"  # the reference name of spec.baseModel

# Bounds that keep every value inside what Kubernetes accepts (int32 completions, int64 seconds) and
# every cost sum finite. The CRD carries them (and the name patterns below), so `kubectl apply`
# refuses a bad recipe before the operator sees it.
MAX_NODES = 1000
MAX_SHARDS = 10_000
MAX_GPUS_PER_NODE = 64
MAX_RETRIES = 100
MAX_TIMEOUT_SECONDS = 10 * 365 * 86400
MAX_GPU_HOUR_USD = 10_000.0
MAX_CPU_HOUR_USD = 1_000.0
MAX_BUDGET_USD = 1e9
MAX_STAGES = 200
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
MAX_GRACE_SECONDS = 86400  # a pod that takes longer to stop holds its GPUs against preemption for a day


def _crd(**schema: Any) -> dict[str, Any]:
    """Rules for the CRD's schema only (the API server checks them; validate.py says why, in words)."""
    return {"json_schema_extra": schema}


class Toleration(Spec):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)


class Topology(Spec):
    level: str = Field(description="Node label of a level of the Kueue Topology behind the pool's ResourceFlavor "
                                   "(e.g. cloud.provider.com/topology-rack).", **_crd(maxLength=317))
    mode: Literal["required", "preferred"] = Field(
        "preferred", description="required: all pods of the stage in one domain of that level, or not admitted; "
        "preferred: Kueue goes up a level when one domain cannot hold them.")


class NodePool(Spec):
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    affinity: dict[str, Any] | None = Field(None, description="A core/v1 Affinity, passed through to the pod.")
    gpu_resource: str = Field("nvidia.com/gpu", description="Extended resource name of the pool's accelerators.",
                              **_crd(maxLength=317, pattern=r"^[^/]+/[^/]+$", **{"x-kubernetes-validations": [{
                                  "rule": "!self.startsWith('requests.') && !self.contains('kubernetes.io/')",
                                  "message": "gpuResource must be an extended resource (vendor.example/name), "
                                             "not cpu, memory or a kubernetes.io resource"}]}))
    gpus_per_node: int = Field(0, ge=0, le=MAX_GPUS_PER_NODE, description="GPUs on each node; 0 for a CPU pool.")
    gpu_hour_usd: float = Field(0.0, ge=0, le=MAX_GPU_HOUR_USD, alias="gpuHourUSD",
                                description="Price of one GPU for one hour.")
    cpu_hour_usd: float = Field(0.0, ge=0, le=MAX_CPU_HOUR_USD, alias="cpuHourUSD",
                                description="Price of one CPU core for one hour.")
    gpu_memory_gib: float | None = Field(
        None, gt=0, le=4096, alias="gpuMemoryGiB",
        description="Memory of one GPU; default: from the nvidia.com/gpu.product nodeSelector label when known.")
    topology: Topology | None = Field(
        None, description="Kueue Topology-Aware Scheduling for the pool's multi-node stages (podset topology "
        "annotation on their pods; docs/kueue.md).")


class Storage(Spec):
    uri: str = Field(description="Root of every stage's output: s3://bucket/prefix or file:///path.")
    endpoint: str | None = Field(None, description="S3 endpoint for MinIO, Ceph, SeaweedFS.")
    region: str | None = None
    path_style: bool | None = Field(None, description="Path-style S3 addressing (most self-hosted servers).")
    credentials_secret: str | None = Field(
        None, description="Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, given to Jobs with envFrom.",
        **_crd(maxLength=253, pattern=DNS_SUBDOMAIN_PATTERN))


IMAGE_FAMILIES = registry.FAMILIES


class Images(Spec):
    data: str | None = Field(None, description="prepare, annotate (openai), curate.")
    infer: str | None = Field(None, description="solve-rate, eval, annotate with a local judge (vLLM).")
    train: str | None = Field(None, description="sft, grpo (torch, TRL, DeepSpeed, vLLM colocate).")
    merge: str | None = Field(None, description="merge (mergekit).")


class Resources(Spec):
    cpu: str | None = Field(None, pattern=r"^[0-9]+(\.[0-9]+)?m?$", description="CPU request per pod, e.g. '8' or '500m'.")
    memory: str | None = Field(None, pattern=r"^[0-9]+(\.[0-9]+)?([EPTGMK]i?|[eE][0-9]+)?$", description="Memory per pod, e.g. '64Gi'.")


class StageCommon(Spec):
    name: str = Field(description="DNS-1123 label; other stages reference this stage by it.",
                      **_crd(maxLength=63, pattern=DNS_LABEL_PATTERN))
    pool: str = Field(description="Node pool (a key of spec.nodePools) the stage runs on.")
    nodes: int = Field(1, gt=0, le=MAX_NODES, description="Nodes for multi-node training (Indexed Job + headless Service).")
    gpus_per_node: int | None = Field(None, ge=0, le=MAX_GPUS_PER_NODE,
                                      description="GPUs per pod; default: the pool's gpusPerNode.")
    shards: int = Field(1, gt=0, le=MAX_SHARDS, description="Pods that split a sampling stage's problems (Indexed Job).")
    retries: int = Field(2, ge=0, le=MAX_RETRIES,
                         description="Failed attempts retried with exponential backoff (preemptions are free).")
    image: str | None = Field(None, description="Overrides the image of the stage's family.", **_crd(maxLength=512))
    resources: Resources | None = None
    timeout_seconds: int | None = Field(None, gt=0, le=MAX_TIMEOUT_SECONDS,
                                        description="activeDeadlineSeconds of each attempt.")
    queue_name: str | None = Field(None, description="Kueue LocalQueue of this stage's Jobs; default: spec.queueName.",
                                   **_crd(maxLength=63, pattern=DNS_SUBDOMAIN_PATTERN))
    priority_class_name: str | None = Field(
        None, description="PriorityClass of the stage's pods (kube-scheduler priority and preemption; Kueue's "
        "Workload priority too unless workloadPriorityClass is set); default: spec.priorityClassName.",
        **_crd(maxLength=253, pattern=DNS_SUBDOMAIN_PATTERN))
    workload_priority_class: str | None = Field(
        None, description="Kueue WorkloadPriorityClass (label kueue.x-k8s.io/priority-class): the priority in the "
        "queue and for Kueue's preemption, pods' priority unchanged; default: spec.workloadPriorityClass.",
        **_crd(maxLength=63, pattern=DNS_SUBDOMAIN_PATTERN))
    termination_grace_period_seconds: int | None = Field(
        None, ge=0, le=MAX_GRACE_SECONDS, description="Seconds a pod has between SIGTERM (preemption, suspend, "
        "deletion) and SIGKILL; default: 900 for training stages (a checkpoint upload can finish), else "
        "Kubernetes' 30.")
    # Each type's model narrows this to its one name (the union's tag).
    type: str = Field(description=f"The stage type: {', '.join(registry.NAMES)} (a section each below).")
    estimate: EstimateHints | None = Field(
        None, description="Hints for the cost forecast until the stage's inputs have run (measured counts win).")


def _stage_model(row: registry.StageType) -> type[StageCommon]:
    """`<Type>Stage`: the placement fields plus the type's parameters, tagged by `type`."""
    name = "".join(part.title() for part in row.name.split("-")) + "Stage"
    tag: Any = Literal[row.name]  # a Literal built at run time, one per registry row
    bases: Any = (StageCommon, row.params)
    return cast(type[StageCommon], create_model(name, __base__=bases, __module__=__name__, type=(tag, ...)))


STAGE_MODELS: dict[str, type[StageCommon]] = {name: _stage_model(row) for name, row in registry.STAGE_TYPES.items()}

if TYPE_CHECKING:
    Stage = StageCommon
else:
    Stage = Annotated[functools.reduce(operator.or_, STAGE_MODELS.values()), Field(discriminator="type")]


def stage_params(stage: StageCommon) -> specs.Spec:
    """The job-side parameter model of a stage (its placement fields dropped)."""
    params_model = registry.stage_type(stage.type).params
    data = stage.model_dump(by_alias=True, include=set(params_model.model_fields), exclude_unset=False)
    return params_model.model_validate(data)


NotifyEvent = Literal["StageFailed", "BudgetExceeded", "Succeeded", "Failed"]
DEFAULT_NOTIFY_EVENTS: tuple[NotifyEvent, ...] = ("StageFailed", "Failed")


class Notify(Spec):
    """Which events of this recipe the operator posts to the admin's webhooks (Helm notifications.webhooks)."""

    events: list[NotifyEvent] = Field(
        default_factory=lambda: list(DEFAULT_NOTIFY_EVENTS), max_length=4,
        description="StageFailed: a stage out of retries; BudgetExceeded; Succeeded: the recipe; Failed: the "
        "recipe (a failed stage, a spent budget, an invalid spec).")
    webhooks: list[Annotated[str, Field(max_length=63)]] | None = Field(
        None, max_length=16, description="Names of the operator's webhooks to use; default: all of them.")


class RecipeSpec(Spec):
    base_model: str = Field(description="The starting model, referenced by stages as `base` (hf://, s3://, file://).")
    storage: Storage | None = Field(None, description="Required unless the operator has a default (Helm values).")
    node_pools: dict[str, NodePool] = Field(
        default_factory=dict, description="Required unless the operator has defaults (Helm values)."
    )
    images: Images = Field(default_factory=Images)
    hf_token_secret: str | None = Field(None, description="Secret with HF_TOKEN for hf:// models and datasets.",
                                        **_crd(maxLength=253, pattern=DNS_SUBDOMAIN_PATTERN))
    budget_usd: float | None = Field(None, gt=0, le=MAX_BUDGET_USD, alias="budgetUSD", description="Spend limit in USD.")
    budget_policy: Literal["no-new-stages", "stop-all", "forecast"] = Field(
        "no-new-stages", description="At the budget: start nothing new, or also suspend running stages; "
        "forecast: also start no stage whose forecast cost would take spending past the budget."
    )
    suspend: bool = Field(False, description="Suspend running Jobs and start nothing.")
    queue_name: str | None = Field(None, description="Kueue LocalQueue; Jobs are created suspended for Kueue to admit "
                                   "(stages[].queueName overrides it).",
                                   **_crd(maxLength=63, pattern=DNS_SUBDOMAIN_PATTERN))
    priority_class_name: str | None = Field(
        None, description="PriorityClass of every stage's pods (stages[].priorityClassName overrides it).",
        **_crd(maxLength=253, pattern=DNS_SUBDOMAIN_PATTERN))
    workload_priority_class: str | None = Field(
        None, description="Kueue WorkloadPriorityClass of every stage's Jobs (stages[].workloadPriorityClass "
        "overrides it).", **_crd(maxLength=63, pattern=DNS_SUBDOMAIN_PATTERN))
    cache: bool = Field(True, description="Skip stages whose output already matches their inputs (memoization).")
    service_account_name: str | None = Field(
        None, description="ServiceAccount of the stage pods (one the operator's policy allows; default: the "
        "operator's).", **_crd(maxLength=253, pattern=DNS_SUBDOMAIN_PATTERN))
    model_info: ModelInfo | None = Field(
        None, description="The base model's shape for the forecast and the GPU memory check, when it is not "
        "DeepSeek-R1-Distill-Qwen-14B and its config.json is not at hand.")
    notify: Notify | None = Field(None, description="Webhook notifications (none unless set; `notify: {}` = "
                                  "StageFailed and Failed to every webhook the operator has).")
    stages: list[Stage] = Field(min_length=1, max_length=MAX_STAGES)

    @property
    def store(self) -> Storage:
        """`storage` of a validated recipe (validation requires it unless the operator's default fills it)."""
        if self.storage is None:
            raise ValueError("spec.storage is required")
        return self.storage


class ObjectMeta(Spec):
    """The part of metadata the CLI reads from a file (the API server owns the rest)."""

    model_config = Spec.model_config | {"extra": "ignore"}
    name: str
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    uid: str | None = None
    generation: int | None = None


class FathomRecipe(Spec):
    api_version: Literal["fathom.dev/v1alpha1"]
    kind: Literal["FathomRecipe"]
    metadata: ObjectMeta
    spec: RecipeSpec
    status: dict[str, Any] | None = None
