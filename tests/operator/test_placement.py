"""Placement per stage: Kueue queue and priority, pod priority and grace period, topology for
multi-node pods, Kueue Workloads held on suspend, and no headless Service outliving its attempt."""

from __future__ import annotations

import asyncio
import copy
from datetime import timedelta

import kmock
import kubernetes_validate
import pytest

from fathom_operator.render import render_stage
from fathom_operator.validate import RecipeInvalid, validate_document
from tests.support.operator_harness import (
    JOBS,
    SERVICES,
    T0,
    Cluster,
    JobController,
    apply,
    events,
    live,
    operator,
    patch_spec,
    recipe,
    small_recipe,
    stage_phase,
    status,
    until,
)

WORKLOADS = "kueue.x-k8s.io/v1beta1/workloads"
QUEUE, PRIORITY = "kueue.x-k8s.io/queue-name", "kueue.x-k8s.io/priority-class"
RACK = "cloud.provider.com/topology-rack"


def placed(**spec) -> dict:
    """The four-stage recipe with recipe-level placement defaults, and sft with its own."""
    doc = small_recipe(**spec)
    doc["spec"]["stages"][3].update(queueName="gpu-queue", priorityClassName="train-high",
                                    workloadPriorityClass="urgent", nodes=2)
    return doc


def job_of(doc: dict, stage: str) -> dict:
    return render_stage(validate_document(doc), stage, 0)[0]


def errors(doc: dict, defaults: dict | None = None) -> list[str]:
    with pytest.raises(RecipeInvalid) as found:
        validate_document(doc, defaults)
    return [str(e) for e in found.value.errors]


# -- render (pure) ---------------------------------------------------------------------------


def test_stage_queue_and_priorities_override_the_recipe_defaults():
    doc = placed(queueName="team-a", priorityClassName="batch-low", workloadPriorityClass="research")
    sft, corpus = job_of(doc, "sft"), job_of(doc, "corpus")
    assert sft["metadata"]["labels"][QUEUE] == "gpu-queue" and sft["metadata"]["labels"][PRIORITY] == "urgent"
    assert sft["spec"]["template"]["spec"]["priorityClassName"] == "train-high"
    assert corpus["metadata"]["labels"][QUEUE] == "team-a" and corpus["metadata"]["labels"][PRIORITY] == "research"
    assert corpus["spec"]["template"]["spec"]["priorityClassName"] == "batch-low"
    assert sft["spec"]["suspend"] is True and corpus["spec"]["suspend"] is True  # Kueue admits them
    for obj in [*render_stage(validate_document(doc), "sft", 0), corpus]:
        kubernetes_validate.validate(obj, "1.33.0", strict=True)


def test_a_stage_queue_alone_puts_only_that_stage_in_kueue():
    doc = placed()
    assert job_of(doc, "sft")["spec"]["suspend"] is True
    corpus = job_of(doc, "corpus")
    assert corpus["spec"]["suspend"] is False
    assert QUEUE not in corpus["metadata"]["labels"] and PRIORITY not in corpus["metadata"]["labels"]
    assert "priorityClassName" not in corpus["spec"]["template"]["spec"]


def test_training_pods_get_time_to_finish_a_checkpoint_others_keep_the_kubernetes_default():
    doc = small_recipe()
    assert job_of(doc, "sft")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 900
    assert "terminationGracePeriodSeconds" not in job_of(doc, "solve")["spec"]["template"]["spec"]
    doc["spec"]["stages"][3]["terminationGracePeriodSeconds"] = 0
    doc["spec"]["stages"][1]["terminationGracePeriodSeconds"] = 120
    assert job_of(doc, "sft")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 0
    assert job_of(doc, "solve")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 120


@pytest.mark.parametrize(("mode", "annotation"), [(None, "kueue.x-k8s.io/podset-preferred-topology"),
                                                  ("required", "kueue.x-k8s.io/podset-required-topology")])
def test_the_pool_topology_is_on_multi_node_pods_only(mode, annotation):
    doc = placed(queueName="team-a")
    doc["spec"]["nodePools"]["gpu"]["topology"] = {"level": RACK, **({"mode": mode} if mode else {})}
    sft = job_of(doc, "sft")
    assert sft["spec"]["template"]["metadata"]["annotations"] == {annotation: RACK}
    kubernetes_validate.validate(sft, "1.33.0", strict=True)
    assert "annotations" not in job_of(doc, "solve")["spec"]["template"]["metadata"]  # 2 shards, not 2 nodes
    doc["spec"]["stages"][3]["nodes"] = 1
    assert "annotations" not in job_of(doc, "sft")["spec"]["template"]["metadata"]


# -- validation and policy -------------------------------------------------------------------


def test_bad_placement_names_are_errors_with_field_paths():
    doc = placed(workloadPriorityClass="w" * 64, priorityClassName="Batch_Low")
    doc["spec"]["stages"][3].update(queueName="GPU.queue", terminationGracePeriodSeconds=-1)
    doc["spec"]["stages"][0]["priorityClassName"] = "-high"
    doc["spec"]["nodePools"]["gpu"]["topology"] = {"level": "rack level", "mode": "always"}
    assert errors(doc) == [  # the schema's errors come first, alone
        "spec.nodePools.gpu.topology.mode: expected 'required' or 'preferred', got 'always'",
        "spec.stages[3].terminationGracePeriodSeconds: Input should be greater than or equal to 0, got -1"]
    doc["spec"]["stages"][3]["terminationGracePeriodSeconds"] = 600
    doc["spec"]["nodePools"]["gpu"]["topology"]["mode"] = "required"
    found = errors(doc)
    assert 'spec.stages[3].queueName: \'GPU.queue\' is not a LocalQueue name (DNS-1123 subdomain of at most 63 ' \
           "characters: it is a label value)" in found
    assert any(e.startswith("spec.workloadPriorityClass: 'www") and "not a WorkloadPriorityClass name" in e
               for e in found)
    assert "spec.priorityClassName: 'Batch_Low' is not a PriorityClass name (DNS-1123 subdomain)" in found
    assert "spec.stages[0].priorityClassName: '-high' is not a PriorityClass name (DNS-1123 subdomain)" in found
    assert any(e.startswith("spec.nodePools.gpu.topology.level: 'rack level' is not a node label key")
               for e in found)


def test_the_admin_decides_which_queues_priorities_and_grace_periods_a_recipe_may_name():
    defaults = {"policy": {"queueNames": ["team-a", "gpu-queue"], "priorityClasses": ["train-high"],
                           "workloadPriorityClasses": ["urgent"], "maxTerminationGracePeriodSeconds": 1200}}
    assert validate_document(placed(queueName="team-a"), defaults)
    doc = placed(queueName="team-b", workloadPriorityClass="research")
    doc["spec"]["stages"][0]["priorityClassName"] = "system-cluster-critical"
    doc["spec"]["stages"][3]["terminationGracePeriodSeconds"] = 3600
    assert errors(doc, defaults) == [
        "spec.queueName: 'team-b' is not allowed; allowed: gpu-queue, team-a (Helm value policy.queueNames)",
        "spec.workloadPriorityClass: 'research' is not allowed; allowed: urgent "
        "(Helm value policy.workloadPriorityClasses)",
        "spec.stages[0].priorityClassName: 'system-cluster-critical' is not allowed; allowed: train-high "
        "(Helm value policy.priorityClasses)",
        "spec.stages[3].terminationGracePeriodSeconds: 3600 s is more than the 1200 s allowed (Helm value "
        "policy.maxTerminationGracePeriodSeconds): a terminating pod holds its GPUs",
    ]
    # Without a queue list any LocalQueue of the namespace may be named; priority classes never by default.
    assert validate_document(placed(queueName="anything"), {"policy": {"priorityClasses": ["train-high"],
                                                                       "workloadPriorityClasses": ["urgent"]}})
    assert errors(placed(), {"policy": {}}) == [
        "spec.stages[3].priorityClassName: 'train-high' is not allowed; allowed: (none) "
        "(Helm value policy.priorityClasses)",
        "spec.stages[3].workloadPriorityClass: 'urgent' is not allowed; allowed: (none) "
        "(Helm value policy.workloadPriorityClasses)"]


# -- against kmock ---------------------------------------------------------------------------


def kube(test):
    """The kmock tests' marks (the pure tests above need none)."""
    for mark in (pytest.mark.kmock(cls=Cluster), pytest.mark.asyncio, pytest.mark.timeout(60)):
        test = mark(test)
    return test

def with_workloads(cluster: Cluster) -> None:
    """Kueue's Workload API, as a cluster with Kueue serves it."""
    cluster.resources[WORKLOADS] = kmock.ResourceInfo(kind="Workload", singular="workload", namespaced=True,
                                                      verbs={"get", "list", "watch", "patch", "create", "delete"})


async def add_workload(cluster: Cluster, name: str, job: dict) -> None:
    """The Workload Kueue creates for a Job: owned by it, active."""
    meta = job["metadata"]
    body = {"apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "Workload",
            "metadata": {"name": name, "namespace": meta["namespace"], "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"],
                 "controller": True, "blockOwnerDeletion": True}]},
            "spec": {"active": True, "queueName": meta["labels"][QUEUE], "podSets": []}}
    resp = await cluster.post(f"/apis/kueue.x-k8s.io/v1beta1/namespaces/{meta['namespace']}/workloads", json=body)
    assert resp.status in (200, 201), await resp.text()


def active(cluster: Cluster, name: str) -> bool | None:
    return live(cluster, WORKLOADS, "ml")[name]["spec"].get("active")


async def admit(ctl: JobController, job: str) -> None:
    """What Kueue does on admission: unsuspend the Job; its pods start."""
    await ctl._patch(JOBS, job, {"spec": {"suspend": False}})
    await ctl.start(job, T0)


@kube
async def test_suspend_deactivates_the_kueue_workload_and_resume_reactivates_it(cluster, clock, config):
    with_workloads(cluster)
    ctl = JobController(cluster)
    async with operator(config):
        await apply(cluster, small_recipe(queueName="team-a"))
        await until(lambda: "r-corpus-0" in ctl.jobs(), what="corpus")
        assert ctl.job("r-corpus-0")["spec"]["suspend"] is True  # queued
        await add_workload(cluster, "job-r-corpus-0-1a2b3", ctl.job("r-corpus-0"))
        await add_workload(cluster, "job-other-0-4c5d6", {"metadata": {
            "name": "other-0", "namespace": "ml", "uid": "u-other", "labels": {QUEUE: "team-a"}}})
        await admit(ctl, "r-corpus-0")
        await until(lambda: stage_phase(cluster, "corpus") == "Running", what="corpus Running")

        await patch_spec(cluster, "ml", "r", {"suspend": True})
        await until(lambda: active(cluster, "job-r-corpus-0-1a2b3") is False, what="the Workload deactivated")
        await until(lambda: ctl.job("r-corpus-0")["spec"]["suspend"] is True, what="corpus suspended")
        await until(lambda: stage_phase(cluster, "corpus") == "Suspended", what="corpus Suspended")
        assert active(cluster, "job-other-0-4c5d6") is True  # another Job's Workload is not ours

        await patch_spec(cluster, "ml", "r", {"suspend": False})
        await until(lambda: active(cluster, "job-r-corpus-0-1a2b3") is True, what="the Workload reactivated")
        await until(lambda: stage_phase(cluster, "corpus") == "Waiting", what="queued again")
        assert status(cluster, "ml", "r")["stages"]["corpus"]["message"] == "queued in Kueue (team-a)"
        assert ctl.job("r-corpus-0")["spec"]["suspend"] is True  # Kueue unsuspends it on admission, not the operator
        patches = [c for c in list(cluster.calls) if c[0] == "PATCH" and c[1] == "workloads"]
        await asyncio.sleep(0.5)  # a few ticks: the change is sent once, not on every reconcile
        assert [c for c in list(cluster.calls) if c[0] == "PATCH" and c[1] == "workloads"] == patches
        assert len(patches) == 2
    assert not [e for e in events(cluster, name="r") if e[0] == "Warning"]


@kube
async def test_each_stage_job_is_queued_and_prioritised_as_its_stage_says(cluster, clock, config):
    ctl = JobController(cluster)
    doc = small_recipe(queueName="team-a", workloadPriorityClass="batch", priorityClassName="batch-low")
    doc["spec"]["stages"][0].update(queueName="cpu-queue", workloadPriorityClass="interactive",
                                    priorityClassName="cpu-high")
    async with operator(config):
        await apply(cluster, doc)
        await until(lambda: "r-corpus-0" in ctl.jobs(), what="corpus")
        await admit(ctl, "r-corpus-0")
        await ctl.succeed("r-corpus-0", T0 + timedelta(minutes=5))
        await until(lambda: "r-solve-0" in ctl.jobs(), what="solve")
    placement = {name: (job["metadata"]["labels"].get(QUEUE), job["metadata"]["labels"].get(PRIORITY),
                        job["spec"]["template"]["spec"].get("priorityClassName")) for name, job in ctl.jobs().items()}
    assert placement == {"r-corpus-0": ("cpu-queue", "interactive", "cpu-high"),  # the stage's own
                         "r-solve-0": ("team-a", "batch", "batch-low")}  # the recipe's defaults


@kube
async def test_without_kueue_a_queued_recipe_still_suspends_and_resumes(cluster, clock, config):
    ctl = JobController(cluster)
    resp = await cluster.get("/apis/kueue.x-k8s.io/v1beta1/namespaces/ml/workloads")
    assert resp.status == 404, await resp.text()  # no Workload API here
    async with operator(config):
        await apply(cluster, small_recipe(queueName="team-a"))
        await until(lambda: "r-corpus-0" in ctl.jobs(), what="corpus")
        await admit(ctl, "r-corpus-0")
        await until(lambda: stage_phase(cluster, "corpus") == "Running", what="corpus Running")
        await patch_spec(cluster, "ml", "r", {"suspend": True})
        await until(lambda: ctl.job("r-corpus-0")["spec"]["suspend"] is True, what="corpus suspended")
        await until(lambda: status(cluster, "ml", "r").get("phase") == "Suspended", what="phase Suspended")
        await patch_spec(cluster, "ml", "r", {"suspend": False})
        await until(lambda: stage_phase(cluster, "corpus") == "Waiting", what="resumed")
    assert not [e for e in events(cluster, name="r") if e[0] == "Warning"]


def multi_node(name: str = "r") -> dict:
    """One two-node SFT stage reading chains from the store."""
    doc = small_recipe(name)
    doc["spec"]["stages"] = [{"name": "sft", "type": "sft", "data": "s3://runs/chains/", "pool": "gpu", "nodes": 2,
                              "retries": 1}]
    return doc


@kube
async def test_a_finished_multi_node_attempt_takes_its_service_with_it(cluster, clock, config):
    ctl = JobController(cluster)
    async with operator(config):
        await apply(cluster, multi_node())
        await until(lambda: "r-sft-0" in ctl.jobs(), what="attempt 0")
        assert set(live(cluster, SERVICES, "ml")) == {"r-sft-0"}
        await ctl.start("r-sft-0", T0)
        clock.now = T0 + timedelta(minutes=10)
        await ctl.fail("r-sft-0", clock.now)
        await until(lambda: "r-sft-0" not in live(cluster, SERVICES, "ml"), what="attempt 0's Service deleted")
        clock.now += timedelta(minutes=2)  # past the backoff
        await until(lambda: "r-sft-1" in ctl.jobs(), what="attempt 1")
        assert set(live(cluster, SERVICES, "ml")) == {"r-sft-1"}
        await ctl.run("r-sft-1", clock.now, 1, clock)
        await until(lambda: stage_phase(cluster, "sft") == "Succeeded", what="sft Succeeded")
        await until(lambda: live(cluster, SERVICES, "ml") == {}, what="attempt 1's Service deleted")
    assert set(ctl.jobs()) == {"r-sft-0", "r-sft-1"}  # the Jobs (and their record) stay


@kube
async def test_a_restarted_operator_deletes_services_whose_attempt_ended_while_it_was_away(cluster, clock, config):
    ctl = JobController(cluster)
    async with operator(config):
        await apply(cluster, multi_node())
        await until(lambda: "r-sft-0" in ctl.jobs(), what="attempt 0")
    uid = recipe(cluster, "ml", "r")["metadata"]["uid"]
    service = copy.deepcopy(live(cluster, SERVICES, "ml")["r-sft-0"])
    for name, owner in (("r-sft-7", uid), ("r-sft-8", "someone-else")):  # an old attempt's, and not ours
        body = copy.deepcopy(service)
        body["metadata"] = {"name": name, "namespace": "ml", "labels": service["metadata"]["labels"],
                            "ownerReferences": [{**service["metadata"]["ownerReferences"][0], "uid": owner}]}
        resp = await cluster.post("/api/v1/namespaces/ml/services", json=body)
        assert resp.status in (200, 201), await resp.text()
    async with operator(config):
        await until(lambda: "r-sft-7" not in live(cluster, SERVICES, "ml"), what="the leaked Service deleted")
        await asyncio.sleep(0.3)
        assert set(live(cluster, SERVICES, "ml")) == {"r-sft-0", "r-sft-8"}  # the running attempt's, another's
