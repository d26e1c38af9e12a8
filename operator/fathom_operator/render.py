"""A stage attempt -> the Kubernetes objects that run it (pure; the operator and `fathom render` share it).

One Job per attempt, named `<recipe>-<stage>-<attempt>` (with a short hash of the recipe's UID and
names when that form could be read two ways: `job_name`) so a restarted operator finds what it
created and no two recipes ever share a name. Sharded sampling stages and multi-node training are
Indexed Jobs (pod i takes shard i / node rank i); multi-node training adds a headless Service for
the torchrun rendezvous on index 0. Placement per stage (recipe-level values as defaults): the Kueue
queue and WorkloadPriorityClass as Job labels, the pods' PriorityClass and grace period, and the
pool's Kueue topology on multi-node pod templates (docs/kueue.md).
The stage's parameters travel as one JSON document (`fathom_jobs.specs.JobSpec`) in
FATHOM_JOB_SPEC, every `$` doubled so the kubelet's `$(VAR)` expansion never touches it;
credentials only by reference (`envFrom: secretRef`) - the operator never reads Secrets.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from fathom_jobs import registry, specs

from . import __version__, bands, dag
from .api.recipe import BASE, FathomRecipe, RecipeSpec, StageCommon, stage_params

LABEL_RECIPE = "fathom.dev/recipe"
LABEL_STAGE = "fathom.dev/stage"
LABEL_ATTEMPT = "fathom.dev/attempt"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# Kueue's Workload priority (a WorkloadPriorityClass; kueue.sigs.k8s.io/docs/concepts/workload_priority_class/).
KUEUE_PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
# Kueue Topology-Aware Scheduling, on the pod template (kueue.sigs.k8s.io/docs/concepts/topology_aware_scheduling/).
KUEUE_TOPOLOGY_ANNOTATIONS = {"required": "kueue.x-k8s.io/podset-required-topology",
                              "preferred": "kueue.x-k8s.io/podset-preferred-topology"}
# A preempted or suspended training pod gets this long to finish a checkpoint upload before SIGKILL
# (a 14B ZeRO-3 checkpoint is ~200 GB of shards); other stages keep Kubernetes' 30 s.
TRAINING_GRACE_SECONDS = 900
TORCHRUN_PORT = 29500
DEFAULT_IMAGE = "ghcr.io/fathom-dev/fathom-{family}:" + __version__
# Per-GPU defaults fit an 8x H100 node (p5/a3-class: ~200 vCPUs, ~2 TiB); CPU stages get a small pod.
CPU_PER_GPU, MEMORY_PER_GPU = "16", "200Gi"
CPU_STAGE_CPU, CPU_STAGE_MEMORY = "4", "16Gi"


def job_name(recipe: str, stage: str, attempt: int, max_len: int = 63, uid: str | None = None) -> str:
    """The attempt's Job name: `<recipe>-<stage>-<attempt>` when that can only be read one way, else
    `<recipe>-<hash>-<stage>-<attempt>`.

    The plain form is unambiguous when neither the recipe nor the stage name has a '-' (and the
    recipe no '.'): recipe `a-b` with stage `c` and recipe `a` with stage `b-c` would both be `a-b-c-0`.
    Otherwise a short hash of the recipe's UID (when known) and both names keeps every recipe's
    names its own, including a recipe deleted and created again under the same name. A plain name
    has exactly two '-', a hashed one at least three, so the two forms never meet. Past max_len the
    recipe part is cut (the hash still covers the whole name). Always a DNS-1123 label.
    """
    plain = f"{recipe}-{stage}-{attempt}"
    if "-" not in recipe and "." not in recipe and "-" not in stage and len(plain) <= max_len:
        return plain
    digest = hashlib.sha256(f"{uid or ''}\0{recipe}\0{stage}".encode()).hexdigest()[:6]
    tail = f"-{digest}-{stage}-{attempt}"
    head = recipe.replace(".", "-")[: max(0, max_len - len(tail))].rstrip("-")
    if not head:  # absurd lengths only (validation bounds them): keep the hash and the attempt
        return f"f{digest}-{stage}"[: max(1, max_len - len(str(attempt)) - 1)].rstrip("-") + f"-{attempt}"
    return head + tail


def service_name(job: str) -> str:
    """A Service name is a DNS-1035 label: it must start with a letter."""
    return job if job[0].isalpha() else f"f{job}"[:63].rstrip("-")


def literal_env(value: str) -> str:
    """An env value the kubelet passes through unchanged: it expands `$(VAR)` in env values (with
    the pod's other variables, Secrets from envFrom included) and turns `$$` into `$`, so every `$`
    of text the operator did not write itself is doubled."""
    return value.replace("$", "$$")


def stage_output_uri(spec: RecipeSpec, namespace: str, recipe: str, stage: str) -> str:
    return f"{spec.store.uri.rstrip('/')}/{namespace}/{recipe}/{stage}/"


def stage_by_name(spec: RecipeSpec, name: str) -> StageCommon:
    return next(s for s in spec.stages if s.name == name)


def produces_results(stage: StageCommon) -> bool:
    """An evaluation stage: its metrics carry the recipe's results table and report."""
    return registry.stage_type(stage.type).output(stage) == specs.RESULTS


def stage_gpus(spec: RecipeSpec, stage: StageCommon) -> int:
    """GPUs requested by each pod of the stage."""
    if stage.gpus_per_node is not None:
        return stage.gpus_per_node
    return spec.node_pools[stage.pool].gpus_per_node


def stage_pods(stage: StageCommon) -> int:
    return stage.nodes if stage.nodes > 1 else stage.shards


def stage_queue(spec: RecipeSpec, stage: StageCommon) -> str | None:
    """The stage's Kueue LocalQueue: its own, else the recipe's."""
    return stage.queue_name or spec.queue_name


def stage_grace_seconds(stage: StageCommon) -> int | None:
    """terminationGracePeriodSeconds of the stage's pods; None: Kubernetes' default (30 s)."""
    if stage.termination_grace_period_seconds is not None:
        return stage.termination_grace_period_seconds
    return TRAINING_GRACE_SECONDS if registry.stage_type(stage.type).trains else None


def stage_image(spec: RecipeSpec, stage: StageCommon) -> str:
    if stage.image:
        return stage.image
    family = registry.stage_type(stage.type).family(stage)
    return getattr(spec.images, family) or DEFAULT_IMAGE.format(family=family)


def resolve_reference(spec: RecipeSpec, namespace: str, recipe: str, target: str) -> str:
    if "://" in target:
        return target
    if target == BASE:
        return spec.base_model
    return stage_output_uri(spec, namespace, recipe, target)


def resolved_params(spec: RecipeSpec, namespace: str, recipe: str, stage: StageCommon) -> dict[str, Any]:
    """The stage's job parameters with every stage reference replaced by its store URI."""
    params = stage_params(stage)
    document = params.model_dump(by_alias=True, mode="json")
    for ref in dag.references(params):
        node: Any = document
        for key in ref.path[:-1]:
            node = node[key]
        node[ref.path[-1]] = resolve_reference(spec, namespace, recipe, ref.target)
    if isinstance(params, specs.SolveRateParams) and params.stop_outside is None:
        document["stopOutside"] = bands.stop_outside(spec, stage)  # adaptive sampling for its curate readers
    return document


def job_spec(recipe: FathomRecipe, stage: StageCommon, attempt: int, namespace: str,
             resume_from: str | None = None) -> specs.JobSpec:
    spec = recipe.spec
    name = recipe.metadata.name
    return specs.JobSpec(
        recipe=name,
        namespace=namespace,
        stage=stage.name,
        type=stage.type,
        attempt=attempt,
        params=resolved_params(spec, namespace, name, stage),
        output=stage_output_uri(spec, namespace, name, stage.name),
        storage=specs.StorageOptions(
            endpoint=spec.store.endpoint, region=spec.store.region, path_style=spec.store.path_style
        ),
        resume_from=resume_from,
        shards=stage.shards,
        nodes=stage.nodes,
        gpus_per_node=stage_gpus(spec, stage),
    )


def _resources(spec: RecipeSpec, stage: StageCommon) -> dict[str, Any]:
    gpus = stage_gpus(spec, stage)
    pool = spec.node_pools[stage.pool]
    cpu = (stage.resources and stage.resources.cpu) or (str(int(CPU_PER_GPU) * gpus) if gpus else CPU_STAGE_CPU)
    memory = (stage.resources and stage.resources.memory) or (
        f"{int(MEMORY_PER_GPU[:-2]) * gpus}Gi" if gpus else CPU_STAGE_MEMORY
    )
    requests: dict[str, Any] = {"cpu": cpu, "memory": memory}
    limits: dict[str, Any] = {"memory": memory}
    if gpus:
        requests[pool.gpu_resource] = gpus
        limits[pool.gpu_resource] = gpus  # extended resources: requests must equal limits
    return {"requests": requests, "limits": limits}


def _env(stage: StageCommon, job: str, document: specs.JobSpec, image: str) -> list[dict[str, Any]]:
    # Every literal value is escaped (literal_env): recipe text never reaches the kubelet's $(VAR)
    # expansion, so the job parses exactly the document the operator fingerprinted.
    env: list[dict[str, Any]] = [
        {"name": "FATHOM_JOB_SPEC", "value": literal_env(document.model_dump_json(by_alias=True))},
        {"name": "FATHOM_STAGE_OUTPUT", "value": literal_env(document.output)},
        # The job fingerprints its output with its image; the operator's memo check uses the same.
        {"name": "FATHOM_IMAGE", "value": literal_env(image)},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "HF_HOME", "value": "/scratch/hf"},
    ]
    if stage.nodes > 1:
        env += [
            {"name": "NNODES", "value": str(stage.nodes)},
            {"name": "NPROC_PER_NODE", "value": str(document.gpus_per_node)},
            {"name": "MASTER_ADDR", "value": literal_env(f"{job}-0.{service_name(job)}")},
            {"name": "MASTER_PORT", "value": str(TORCHRUN_PORT)},
            # JOB_COMPLETION_INDEX is set by the Job controller; torchrun reads NODE_RANK.
            {"name": "NODE_RANK", "valueFrom": {"fieldRef": {
                "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
        ]
    return env


def _env_from(spec: RecipeSpec, stage: StageCommon) -> list[dict[str, Any]]:
    secrets = [spec.store.credentials_secret, spec.hf_token_secret]
    if isinstance(stage, specs.AnnotateParams):
        secrets.append(stage.judge.api_key_secret)
    if isinstance(stage, specs.TrainingParams):
        secrets.append(stage.wandb_api_key_secret)
    return [{"secretRef": {"name": s}} for s in dict.fromkeys(secrets) if s]


def labels(recipe: str, stage: str, attempt: int) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "fathom",
        "app.kubernetes.io/managed-by": "fathom-operator",
        LABEL_RECIPE: recipe,
        LABEL_STAGE: stage,
        LABEL_ATTEMPT: str(attempt),
    }


def render_stage(recipe: FathomRecipe, stage_name: str, attempt: int = 0, *, namespace: str | None = None,
                 resume_from: str | None = None, owner: dict[str, Any] | None = None,
                 suspend: bool = False) -> list[dict[str, Any]]:
    """The Job (and for multi-node stages the headless Service) of one attempt of one stage.

    Names are unique per recipe object: the owner's UID (else metadata.uid) goes into the name's hash."""
    spec = recipe.spec
    namespace = namespace or recipe.metadata.namespace or "default"
    stage = stage_by_name(spec, stage_name)
    pool = spec.node_pools[stage.pool]
    pods = stage_pods(stage)
    indexed = pods > 1
    # Indexed pods are named <job>-<index> as hostnames: leave room for the index.
    uid = (owner or {}).get("uid") or recipe.metadata.uid
    name = job_name(recipe.metadata.name, stage.name, attempt, 63 - (len(str(pods - 1)) + 1 if indexed else 0),
                    uid=uid)
    document = job_spec(recipe, stage, attempt, namespace, resume_from)
    meta_labels = labels(recipe.metadata.name, stage.name, attempt)
    queue = stage_queue(spec, stage)
    if queue:
        meta_labels[KUEUE_QUEUE_LABEL] = queue
    if workload_priority := stage.workload_priority_class or spec.workload_priority_class:
        meta_labels[KUEUE_PRIORITY_LABEL] = workload_priority
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": meta_labels,
        "annotations": {"fathom.dev/stage-type": stage.type, "fathom.dev/output": document.output},
    }
    if owner:
        metadata["ownerReferences"] = [copy.deepcopy(owner)]
    gpus = stage_gpus(spec, stage)
    container: dict[str, Any] = {
        "name": "stage",
        "image": stage_image(spec, stage),
        "command": ["python", "-m", "fathom_jobs", stage.type],
        "env": _env(stage, name, document, stage_image(spec, stage)),
        "resources": _resources(spec, stage),
        # A failed stage's last log lines become the pod's message, which the operator reports.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
        },
        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    if env_from := _env_from(spec, stage):
        container["envFrom"] = env_from
    volumes: list[dict[str, Any]] = [{"name": "scratch", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]
    if gpus:
        # NCCL and dataloader workers need more shared memory than the container default of 64 MiB.
        container["volumeMounts"].append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
    if stage.nodes > 1:
        container["ports"] = [{"name": "rendezvous", "containerPort": TORCHRUN_PORT}]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if pool.node_selector:
        pod_spec["nodeSelector"] = dict(pool.node_selector)
    if pool.tolerations:
        pod_spec["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in pool.tolerations]
    if pool.affinity:
        pod_spec["affinity"] = copy.deepcopy(pool.affinity)
    if spec.service_account_name:
        pod_spec["serviceAccountName"] = spec.service_account_name
    if stage.nodes > 1:
        pod_spec["subdomain"] = service_name(name)
    if priority := stage.priority_class_name or spec.priority_class_name:
        pod_spec["priorityClassName"] = priority
    if (grace := stage_grace_seconds(stage)) is not None:
        pod_spec["terminationGracePeriodSeconds"] = grace
    template_meta: dict[str, Any] = {"labels": dict(meta_labels)}
    if stage.nodes > 1 and pool.topology is not None:
        # One podset of `nodes` pods: Kueue places them all within one domain of the level (or prefers to).
        template_meta["annotations"] = {KUEUE_TOPOLOGY_ANNOTATIONS[pool.topology.mode]: pool.topology.level}
    job_spec_body: dict[str, Any] = {
        # Retries are the operator's (new Job per attempt, with backoff and a preemption rule).
        "backoffLimit": 0,
        "completions": pods,
        "parallelism": pods,
        "suspend": bool(suspend or queue),
        "template": {"metadata": template_meta, "spec": pod_spec},
    }
    if indexed:
        job_spec_body["completionMode"] = "Indexed"
    if stage.timeout_seconds:
        job_spec_body["activeDeadlineSeconds"] = stage.timeout_seconds
    objects: list[dict[str, Any]] = [
        {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec_body}
    ]
    if stage.nodes > 1:
        objects.append({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {**copy.deepcopy(metadata), "name": service_name(name)},
            "spec": {
                "clusterIP": "None",
                # torchrun resolves index 0 before any pod is ready.
                "publishNotReadyAddresses": True,
                "selector": {"batch.kubernetes.io/job-name": name},
                "ports": [{"name": "rendezvous", "port": TORCHRUN_PORT, "targetPort": TORCHRUN_PORT}],
            },
        })
    return objects


def render_recipe(recipe: FathomRecipe, namespace: str | None = None) -> list[dict[str, Any]]:
    """Attempt 0 of every stage, in execution order."""
    order = [name for level in dag.levels(dag.dependencies(recipe.spec)) for name in level]
    return [obj for name in order for obj in render_stage(recipe, name, 0, namespace=namespace)]
