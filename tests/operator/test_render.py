"""`fathom render`: the objects the operator creates, valid for the API server and placed right."""

from __future__ import annotations

import json
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

from fathom_operator.render import job_name, render_recipe, render_stage
from fathom_operator.validate import load_recipe, validate_document
from tests.support.helpers import EXAMPLE_FILES, ROOT, example

K8S_VERSIONS = ["1.30.0", "1.33.0"]


def recipe(name: str):
    return load_recipe((ROOT / "manifests" / "examples" / name).read_text())


def env_of(job: dict) -> dict[str, dict]:
    return {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}


def job_document(job: dict) -> dict:
    return json.loads(env_of(job)["FATHOM_JOB_SPEC"]["value"])


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_every_rendered_object_validates_strictly(path, version):
    out = subprocess.run([sys.executable, "-m", "fathom_operator.cli", "render", str(path), "-n", "ml"],
                         capture_output=True, text=True, check=True).stdout
    objects = list(yaml.safe_load_all(out))
    assert objects
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)
        assert obj["metadata"]["namespace"] == "ml"


def test_one_job_per_stage_named_deterministically():
    r = recipe("fathom-r1-14b.yaml")
    jobs = [o for o in render_recipe(r) if o["kind"] == "Job"]
    assert sorted(j["metadata"]["name"] for j in jobs) == sorted(job_name(r.metadata.name, s.name, 0)
                                                                 for s in r.spec.stages)
    assert all(j["metadata"]["name"].startswith("fathom-r1-14b-") and
               j["metadata"]["name"].endswith(f"-{j['metadata']['labels']['fathom.dev/stage']}-0") for j in jobs)
    assert render_recipe(r) == render_recipe(r)


def test_long_names_are_hash_shortened_and_stay_unique():
    long_recipe = "a-very-long-recipe-name-for-the-fathom-r1-fourteen-b-rs-ablation"
    a = job_name(long_recipe, "sft-curriculum", 0)
    b = job_name(long_recipe + "x", "sft-curriculum", 0)
    assert len(a) <= 63 and len(b) <= 63 and a != b
    assert a.endswith("-sft-curriculum-0") and a == job_name(long_recipe, "sft-curriculum", 0)
    assert job_name("short", "sft", 3) == "short-sft-3"  # one way to read it: the plain form


def test_gpu_stage_placement_requests_and_security():
    job = render_stage(recipe("fathom-r1-14b.yaml"), "sft-curriculum", 0)[0]
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 8 == container["resources"]["limits"]["nvidia.com/gpu"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert job["metadata"]["labels"]["fathom.dev/stage"] == "sft-curriculum"
    assert job["metadata"]["labels"]["fathom.dev/attempt"] == "0"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]


def test_parameters_travel_as_one_document_with_references_resolved():
    job = render_stage(recipe("fathom-r1-14b.yaml"), "fathom-r1-14b", 0, namespace="ml")[0]
    doc = job_document(job)
    assert doc["type"] == "merge" and doc["output"] == "s3://fathom-runs/ml/fathom-r1-14b/fathom-r1-14b/"
    assert [m["model"] for m in doc["params"]["models"]] == [
        "s3://fathom-runs/ml/fathom-r1-14b/sft-curriculum/", "s3://fathom-runs/ml/fathom-r1-14b/sft-shortest/"]
    sft = job_document(render_stage(recipe("fathom-r1-14b.yaml"), "sft-curriculum", 0)[0])
    assert sft["params"]["model"] == "hf://deepseek-ai/DeepSeek-R1-Distill-Qwen-14B"
    assert sft["params"]["maxLength"] == 16384 and sft["params"]["passes"] == 3


def test_credentials_only_by_reference():
    r = recipe("fathom-r1-14b.yaml")
    annotate = render_stage(r, "difficulty", 0)[0]["spec"]["template"]["spec"]["containers"][0]
    assert annotate["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}, {"secretRef": {"name": "hf-token"}},
                                   {"secretRef": {"name": "openai"}}]
    assert all("valueFrom" not in e or "secretKeyRef" not in e["valueFrom"] for e in annotate["env"])


def test_multi_node_training_is_an_indexed_job_with_a_headless_service():
    job, service = render_stage(recipe("fathom-r1-14b.yaml"), "sft-shortest", 1)
    assert job["metadata"]["name"] == job_name("fathom-r1-14b", "sft-shortest", 1, 61)
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 2 == job["spec"]["parallelism"]
    assert job["spec"]["template"]["spec"]["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": job["metadata"]["name"]}
    env = env_of(job)
    assert env["MASTER_ADDR"]["value"] == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert env["NNODES"]["value"] == "2" and env["NPROC_PER_NODE"]["value"] == "8"
    assert "job-completion-index" in env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]


def test_sharded_sampling_is_an_indexed_job_without_service():
    objects = render_stage(recipe("fathom-r1-14b.yaml"), "solve", 0)
    assert len(objects) == 1
    job = objects[0]
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 4
    assert job_document(job)["shards"] == 4


def test_kueue_queue_creates_suspended_labelled_jobs():
    doc = example("fathom-r1-14b.yaml")
    doc["spec"]["queueName"] = "team-a"
    job = render_stage(validate_document(doc), "eval", 0)[0]
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"


def test_training_pods_get_a_checkpoint_grace_period_and_queue_per_stage():
    doc = example("fathom-r1-14b.yaml")
    doc["spec"]["queueName"] = "team-a"
    doc["spec"]["stages"][6]["queueName"] = "team-a-gpu"
    r = validate_document(doc)
    sft, solve = render_stage(r, "sft-shortest", 0)[0], render_stage(r, "solve", 0)[0]
    assert sft["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 900
    assert "terminationGracePeriodSeconds" not in solve["spec"]["template"]["spec"]
    assert sft["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a-gpu"
    assert solve["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"


def test_cpu_stage_requests_no_gpu_and_uses_its_family_image():
    job = render_stage(recipe("fathom-r1-14b.yaml"), "corpus", 0)[0]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in container["resources"]["requests"]
    assert container["image"].startswith("ghcr.io/fathom-dev/fathom-data:")
    assert container["command"] == ["python", "-m", "fathom_jobs", "prepare"]
