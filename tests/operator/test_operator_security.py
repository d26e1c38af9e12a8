"""Issue 14's defects against the real operator (kopf + kmock): names, ownership, endpoints, isolation.

Only 127.0.0.1 is contacted: kmock, and a tripwire HTTP server that must receive nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses

import kmock
import pytest

from fathom_operator import plan as planning
from fathom_operator.render import job_name
from tests.support.operator_harness import (
    JOBS,
    RECIPES,
    T0,
    Cluster,
    JobController,
    apply,
    creates,
    events,
    live,
    operator,
    recipe,
    small_recipe,
    stage_phase,
    status,
    until,
)
from tests.support.tripwire import tripwire, url

pytestmark = [pytest.mark.kmock(cls=Cluster), pytest.mark.asyncio, pytest.mark.timeout(90)]


def one_stage(name: str, stage: str, **spec) -> dict:
    doc = small_recipe(name)
    doc["spec"]["stages"] = [{"name": stage, "type": "prepare", "pool": "cpu", "sources": [{"uri": "aime24"}]}]
    doc["spec"].update(spec)
    return doc


async def test_the_collision_pair_runs_side_by_side(cluster, config):
    async with operator(config):
        await apply(cluster, one_stage("a-b", "c"))
        await apply(cluster, one_stage("a", "b-c"))
        mine = {}
        for name, stage in (("a-b", "c"), ("a", "b-c")):
            uid = recipe(cluster, "ml", name)["metadata"]["uid"]
            mine[name] = job_name(name, stage, 0, uid=uid)
        await until(lambda: set(mine.values()) <= set(live(cluster, JOBS, "ml")), what="both Jobs")
        await until(lambda: all(status(cluster, "ml", n).get("stages") for n in mine), what="both statuses")
        await asyncio.sleep(0.5)
    assert len(set(mine.values())) == 2 and sorted(creates(cluster)) == sorted(mine.values())
    for name, job in mine.items():
        stage = "c" if name == "a-b" else "b-c"
        assert status(cluster, "ml", name)["stages"][stage]["job"] == job
        owner = live(cluster, JOBS, "ml")[job]["metadata"]["ownerReferences"][0]
        assert owner["uid"] == recipe(cluster, "ml", name)["metadata"]["uid"]


async def _foreign_job(cluster: Cluster, name: str, owner_uid: str) -> None:
    body = {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": "ml",
                         "labels": {"fathom.dev/recipe": "r", "fathom.dev/stage": "corpus", "fathom.dev/attempt": "0"},
                         "ownerReferences": [{"apiVersion": "fathom.dev/v1alpha1", "kind": "FathomRecipe", "name": "r",
                                              "uid": owner_uid, "controller": True}]},
            "spec": {"template": {"spec": {"containers": [{"name": "x", "image": "busybox"}]}}},
            "status": {"startTime": "2026-03-01T00:00:00Z", "completionTime": "2026-03-01T10:00:00Z",
                       "conditions": [{"type": "Complete", "status": "True",
                                       "lastTransitionTime": "2026-03-01T10:00:00Z"}]}}
    resp = await cluster.post("/apis/batch/v1/namespaces/ml/jobs", json=body)
    assert resp.status in (200, 201), await resp.text()


async def test_a_name_taken_by_another_object_is_an_error_on_the_stage_not_a_false_success(cluster, config):
    await _foreign_job(cluster, "r-corpus-0", "someone-elses-uid")
    async with operator(config):
        await apply(cluster, small_recipe())
        await until(lambda: stage_phase(cluster, "corpus") == "Failed", what="corpus Failed")
        await asyncio.sleep(1.0)  # several resyncs: the name is not tried again and again
        message = status(cluster, "ml", "r")["stages"]["corpus"]["message"]
        assert message.startswith("Job r-corpus-0 already exists and belongs to another object")
        assert creates(cluster).count("r-corpus-0") == 2  # the foreign one, and our single try
        posted = events(cluster, name="r")
        assert ("Warning", "NameConflict") in {(t, r) for t, r, _ in posted}
        assert not [m for _, r, m in posted if r == "JobCreated"]
        assert status(cluster, "ml", "r")["cost"]["usd"] == 0  # its 10 hours are not ours


async def test_a_recreated_recipe_never_adopts_the_old_ones_jobs_or_cost(cluster, clock, config):
    ctl = JobController(cluster)
    async with operator(config):
        await apply(cluster, small_recipe())
        await ctl.run("r-corpus-0", T0, 2, clock)
        await until(lambda: status(cluster, "ml", "r")["stages"]["corpus"]["phase"] == "Succeeded", what="corpus done")
        assert status(cluster, "ml", "r")["stages"]["corpus"]["costUSD"] > 0
        old_uid = recipe(cluster, "ml", "r")["metadata"]["uid"]
        resp = await cluster.delete("/apis/fathom.dev/v1alpha1/namespaces/ml/fathomrecipes/r")
        assert resp.status == 200
        await until(lambda: cluster._objects._objects[kmock.resource(RECIPES), "ml", "r"].deleted, what="deleted")
        # kmock has no garbage collector: the old Jobs stay, as after `kubectl delete --cascade=orphan`.
        del cluster._objects._objects[kmock.resource(RECIPES), "ml", "r"]
        await apply(cluster, small_recipe())
        await until(lambda: recipe(cluster, "ml", "r")["metadata"]["uid"] != old_uid, what="a new uid")
        await until(lambda: stage_phase(cluster, "corpus") == "Failed", what="the old Job is refused")
        st = status(cluster, "ml", "r")
        assert st["cost"]["usd"] == 0 and not st["stages"]["corpus"].get("history")
        assert "belongs to another object" in st["stages"]["corpus"]["message"]
        assert live(cluster, JOBS, "ml")["r-corpus-0"]["metadata"]["ownerReferences"][0]["uid"] == old_uid


async def test_an_endpoint_outside_the_allow_list_makes_the_recipe_invalid_and_gets_no_request(
        cluster, config, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAOPERATORKEY00000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "operator-secret-never-sent")
    with tripwire() as server:
        admin = {"storage": {"uri": "s3://runs", "endpoint": "http://127.0.0.1:9"}, "policy": {}}
        strict = dataclasses.replace(config, defaults=admin, store_opener=None)  # the real S3 client
        doc = small_recipe(cache=True, storage={"uri": "s3://runs", "endpoint": url(server)})
        async with operator(strict):
            await apply(cluster, doc)
            await until(lambda: status(cluster, "ml", "r").get("phase") == "Failed", what="Invalid")
            invalid = next(c for c in status(cluster, "ml", "r")["conditions"] if c["type"] == "Invalid")
            assert invalid["status"] == "True" and invalid["message"].startswith("spec.storage.endpoint: ")
            await asyncio.sleep(0.5)
        assert server.requests == [] and live(cluster, JOBS) == {}
        # The control: an admin who lists it gets the memo check sent there (403 here: a stage
        # message and a Warning event, and the stage runs anyway).
        listed = dataclasses.replace(strict, defaults={**admin, "policy": {"storageEndpoints": [url(server)]}})
        async with operator(listed):
            await until(lambda: server.requests, what="a request to the allowed endpoint")
            await until(lambda: "r-corpus-0" in live(cluster, JOBS), what="the Job, memo check failed or not")
            await until(lambda: [e for e in events(cluster, name="r") if e[1] == "StoreReadFailed"], what="the event")
        assert all("operator-secret-never-sent" not in str(r) for r in server.requests)


async def test_one_recipe_that_breaks_the_planner_never_stops_another(cluster, config, monkeypatch):
    real = planning.plan

    def broken(inp: planning.Inputs) -> planning.Plan:
        if inp.name == "bad":
            raise ZeroDivisionError("a bug in the planner")
        return real(inp)

    monkeypatch.setattr(planning, "plan", broken)
    async with operator(config):
        await apply(cluster, small_recipe("bad"))
        await apply(cluster, small_recipe("good"))
        await until(lambda: "good-corpus-0" in live(cluster, JOBS, "ml"), what="good's Job")
        await until(lambda: [e for e in events(cluster, name="bad") if e[1] == "ReconcileFailed"], what="the report")
        await asyncio.sleep(1.0)  # many resyncs: still one event, not one per tick
    reports = [e for e in events(cluster, name="bad") if e[1] == "ReconcileFailed"]
    assert len(reports) == 1 and "ZeroDivisionError: a bug in the planner" in reports[0][2]
    assert stage_phase(cluster, "corpus", name="good") == "Waiting"


async def test_a_garbage_status_is_replaced_not_crashed_on(cluster, config):
    doc = small_recipe()
    doc["status"] = {"stages": ["not", "a", "mapping"], "conditions": "none", "cost": 7}
    async with operator(config):
        await apply(cluster, doc)
        await until(lambda: "r-corpus-0" in live(cluster, JOBS), what="the Job")
        await until(lambda: isinstance(status(cluster, "ml", "r").get("stages"), dict), what="a readable status")
    assert stage_phase(cluster, "corpus") == "Waiting"


async def test_an_oversize_manifest_is_a_warning_not_memory(cluster, config, tmp_path):
    output = tmp_path / "store" / "runs" / "ml" / "r" / "corpus"
    output.mkdir(parents=True)
    with open(output / "_MANIFEST.json", "wb") as handle:  # 9 MiB: over the operator's 8 MiB bound
        handle.write(b'{"files": {' + b" " * (9 * 1024 * 1024) + b"}}")
    async with operator(config):
        await apply(cluster, small_recipe(cache=True))
        await until(lambda: "r-corpus-0" in live(cluster, JOBS), what="the Job (the memo check failed)")
        await until(lambda: [e for e in events(cluster, name="r") if e[1] == "StoreReadFailed"], what="the warning")
    warning = next(m for _, r, m in events(cluster, name="r") if r == "StoreReadFailed")
    assert "limited to 8388608 bytes" in warning
