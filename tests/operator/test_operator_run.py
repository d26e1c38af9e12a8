"""The operator end to end against kmock: the Fathom-R1-14B recipe runs to Ready, in DAG order.

The test plays the Job controller with scripted pod times (hours after T0), so the cost on the
status is exact to the cent: CPU stages at 4 CPUs x $0.04 (the merge asks for 16), GPU stages at
pods x 8 GPUs x $2.83.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from fathom_operator.render import job_name
from tests.support.helpers import TWO_PASSES
from tests.support.operator_harness import (
    JOBS,
    SERVICES,
    T0,
    Clock,
    Cluster,
    JobController,
    apply,
    creates,
    events,
    live,
    make_config,
    operator,
    recipe,
    recipe_doc,
    status,
    until,
    write_kubeconfig,
)

pytestmark = [pytest.mark.kmock(cls=Cluster), pytest.mark.asyncio, pytest.mark.timeout(120)]

NAME = "fathom-r1-14b"


UID: dict[str, str] = {}  # the recipe's uid, once the API server gave it one


def job(stage: str, attempt: int = 0) -> str:
    """The Job name: fathom-r1-14b and its stages hold '-', so the name carries a hash of the recipe's UID."""
    return job_name(NAME, stage, attempt, uid=UID["uid"])


# (hour, action, stage, Jobs that must exist afterwards, once the operator has seen the action)
TIMELINE = [
    (0, "start", "corpus", {"corpus"}),
    (1, "succeed", "corpus", {"corpus", "difficulty"}),
    (1, "start", "difficulty", None),
    (3, "succeed", "difficulty", {"corpus", "difficulty", "solve-6k", "solve-16k"}),
    (3, "start", "solve-6k", None),
    (3, "start", "solve-16k", None),
    (5, "succeed", "solve-6k", {"corpus", "difficulty", "solve-6k", "solve-16k", "curriculum-set"}),
    (5, "start", "curriculum-set", None),
    (5.5, "succeed", "curriculum-set", {"corpus", "difficulty", "solve-6k", "solve-16k", "curriculum-set",
                                        "sft-curriculum"}),
    (5.5, "start", "sft-curriculum", None),
    (6, "succeed", "solve-16k", {"corpus", "difficulty", "solve-6k", "solve-16k", "curriculum-set",
                                 "sft-curriculum", "shortest-set"}),
    (6, "start", "shortest-set", None),
    (6.5, "succeed", "shortest-set", {"corpus", "difficulty", "solve-6k", "solve-16k", "curriculum-set",
                                      "sft-curriculum", "shortest-set", "sft-shortest"}),
    (6.5, "start", "sft-shortest", None),
    (11.5, "succeed", "sft-curriculum", None),  # the merge still waits for sft-shortest
    (14.5, "succeed", "sft-shortest", {"corpus", "difficulty", "solve-6k", "solve-16k", "curriculum-set",
                                       "sft-curriculum", "shortest-set", "sft-shortest", NAME}),
    (14.5, "start", NAME, None),
    (15.5, "succeed", NAME, {"corpus", "difficulty", "solve-6k", "solve-16k", "curriculum-set", "sft-curriculum",
                             "shortest-set", "sft-shortest", NAME, "eval"}),
    (15.5, "start", "eval", None),
    (17.5, "succeed", "eval", None),
]

# stage -> (GPU-hours, USD)
EXPECTED_COST = {
    "corpus": (0.0, 0.16), "difficulty": (0.0, 0.32), "solve-6k": (64.0, 181.12), "solve-16k": (96.0, 271.68),
    "curriculum-set": (0.0, 0.08), "shortest-set": (0.0, 0.08), "sft-curriculum": (48.0, 135.84),
    "sft-shortest": (128.0, 362.24), NAME: (0.0, 0.64), "eval": (128.0, 362.24),
}


def phase_of(cluster, stage: str) -> str | None:
    return (status(cluster).get("stages") or {}).get(stage, {}).get("phase")


async def drive(cluster, ctl: JobController, clock: Clock, hour: float, action: str, stage: str) -> None:
    at = T0 + timedelta(hours=hour)
    clock.now = at
    await until(lambda: job(stage) in ctl.jobs(), what=f"Job {job(stage)}")
    if action == "start":
        await ctl.start(job(stage), at)
        await until(lambda: phase_of(cluster, stage) == "Running", what=f"{stage} Running")
    else:
        await ctl.succeed(job(stage), at)
        await until(lambda: phase_of(cluster, stage) == "Succeeded", what=f"{stage} Succeeded")


RESULTS = {"base": {"aime25": {"pass@1": 45.5, "cons@k": 63.33, "k": 64, "meanTokens": 11214.0, "samples": 1920}},
           NAME: {"aime25": {"pass@1": 52.71, "cons@k": 76.7, "k": 64, "meanTokens": 9880.0, "samples": 1920}}}


async def test_fathom_r1_14b_runs_to_ready_in_dependency_order_with_exact_cost(cluster, tmp_path):
    clock = Clock()
    config = make_config(write_kubeconfig(tmp_path / "kubeconfig", cluster.url), clock, tmp_path / "store")
    outputs = tmp_path / "store" / "fathom-runs" / "ml" / NAME  # s3://fathom-runs/ml/<recipe>/ on local disk
    ctl = JobController(cluster)
    async with operator(config):
        await apply(cluster, recipe_doc(name=NAME, example_file=TWO_PASSES))  # two parallel samplers
        UID["uid"] = recipe(cluster, "ml", NAME)["metadata"]["uid"]
        for hour, action, stage, expected in TIMELINE:
            if (action, stage) == ("succeed", "eval"):  # the eval Job's last words
                (outputs / "eval").mkdir(parents=True, exist_ok=True)
                (outputs / "eval" / "metrics.json").write_text(json.dumps({"results": RESULTS, "resultsFile": "results.json"}))
            await drive(cluster, ctl, clock, hour, action, stage)
            if (action, stage) == ("start", "sft-shortest"):  # the trainer reports where it is
                (outputs / "sft-shortest").mkdir(parents=True, exist_ok=True)
                (outputs / "sft-shortest" / "progress.json").write_text(json.dumps(
                    {"step": 450, "total": 1000, "fraction": 0.45, "eta_seconds": 3600.0}))
            if (action, stage) == ("succeed", "sft-curriculum"):  # read on the next tick, 5 h later
                await until(lambda: status(cluster)["stages"]["sft-shortest"].get("progress"), what="progress")
                assert status(cluster)["stages"]["sft-shortest"]["progress"] == {
                    "fraction": 0.45, "step": 450, "total": 1000, "etaSeconds": 3600}
                assert status(cluster)["progress"] == "52%"  # (76 GPU-weighted units done + 0.45 x 16) / 157
            if expected is not None:
                # The operator has seen the change (the status says so): every stage it could start
                # now exists, and nothing else does.
                await until(lambda e=expected: set(ctl.jobs()) >= {job(s) for s in e}, what=f"Jobs {expected}")
                assert set(ctl.jobs()) == {job(s) for s in expected}
            if (hour, action, stage) == (3, "start", "solve-16k"):
                clock.now = T0 + timedelta(hours=4)  # both samplers 1 h in: live cost on the next tick
                await until(lambda: status(cluster)["cost"]["usd"] == 181.60, what="live cost $181.60")
                assert status(cluster)["stages"]["solve-16k"]["gpuHours"] == 32.0
        await until(lambda: status(cluster).get("phase") == "Succeeded", what="recipe Succeeded")
        await until(lambda: events(cluster, name=NAME)[-1][1] == "RecipeSucceeded", what="the last event")
        final = status(cluster)

    assert final["observedGeneration"] == 1
    assert final["results"][NAME]["aime25"]["pass@1"] == 52.71 and final["results"]["base"]["aime25"]["cons@k"] == 63.33
    assert final["report"] == f"s3://fathom-runs/ml/{NAME}/eval/report.html"
    assert {c["type"]: c["status"] for c in final["conditions"]} == {
        "Ready": "True", "Progressing": "False", "Failed": "False", "BudgetExceeded": "False",
        "Suspended": "False", "Invalid": "False"}
    assert final["progress"] == "100%" and "currentStage" not in final
    for stage, (gpu_hours, usd) in EXPECTED_COST.items():
        st = final["stages"][stage]
        assert (st["phase"], st["gpuHours"], st["costUSD"], st["attempts"]) == ("Succeeded", gpu_hours, usd, 1), stage
        assert st["output"] == f"s3://fathom-runs/ml/{NAME}/{stage}/"
        assert st["job"] == job(stage) and st["history"][0]["outcome"] == "Succeeded"
    assert final["stages"]["sft-shortest"]["startTime"] == "2026-03-01T18:30:00Z"
    assert final["stages"]["sft-shortest"]["completionTime"] == "2026-03-02T02:30:00Z"
    assert final["cost"] == {"gpuHours": 464.0, "usd": 1314.40, "wastedGPUHours": 0.0, "wastedUSD": 0.0,
                             "display": "$1314.40"}

    # Every Job is owned by the recipe (deleting the recipe deletes them); the multi-node stage's headless
    # Service is deleted once its attempt finished.
    uid = recipe(cluster, "ml", NAME)["metadata"]["uid"]
    owner = {"apiVersion": "fathom.dev/v1alpha1", "kind": "FathomRecipe", "name": NAME, "uid": uid,
             "controller": True, "blockOwnerDeletion": True}
    for obj in [*live(cluster, JOBS, "ml").values(), *live(cluster, SERVICES, "ml").values()]:
        assert obj["metadata"]["ownerReferences"] == [owner]
        assert obj["metadata"]["annotations"]["fathom.dev/fingerprint"] == final["stages"][
            obj["metadata"]["labels"]["fathom.dev/stage"]]["fingerprint"]
    assert live(cluster, SERVICES, "ml") == {}
    assert job("sft-shortest") in creates(cluster, "services")

    # kubectl describe reads as a timeline: every stage created, running, succeeded, in order.
    timeline = [(reason, message.split(":")[0].split(" ")[0]) for _, reason, message in events(cluster, name=NAME)]
    succeeded = [stage for reason, stage in timeline if reason == "StageSucceeded"]
    assert succeeded == ["corpus", "difficulty", "solve-6k", "curriculum-set", "solve-16k", "shortest-set",
                         "sft-curriculum", "sft-shortest", NAME, "eval"]
    for stage in EXPECTED_COST:
        mine = [reason for reason, s in timeline if s == stage]
        assert mine == ["JobCreated", "StageRunning", "StageSucceeded"], (stage, mine)
    assert events(cluster, name=NAME)[-1] == ("Normal", "RecipeSucceeded",
                                              "all stages done: 464.00 GPU-hours, $1,314.40")


async def test_a_stage_whose_output_is_already_in_the_store_is_cached_without_a_job(cluster, tmp_path, monkeypatch):
    from fathom_jobs.memo import job_fingerprint
    from fathom_jobs.store import open_store
    from fathom_operator.render import job_spec, stage_by_name, stage_image
    from fathom_operator.validate import validate_document
    from tests.support.operator_harness import small_recipe, stage_phase

    doc = small_recipe(cache=True)
    recipe = validate_document(doc)
    corpus = stage_by_name(recipe.spec, "corpus")
    job = job_spec(recipe, corpus, 0, "ml")
    # What the prepare Job would have committed on an earlier run with these very inputs.
    monkeypatch.setenv("FATHOM_IMAGE", stage_image(recipe.spec, corpus))
    fp = job_fingerprint(job)
    local = tmp_path / "artifact"
    (local / "data").mkdir(parents=True)
    (local / "data" / "part-00000.parquet").write_bytes(b"rows")
    (tmp_path / "store" / "runs" / "ml" / "r" / "corpus").mkdir(parents=True)
    open_store(f"file://{tmp_path}/store/runs/ml/r/corpus").upload_dir(local, "", fingerprint=fp)

    clock = Clock()
    config = make_config(write_kubeconfig(tmp_path / "kubeconfig", cluster.url), clock, tmp_path / "store")
    ctl = JobController(cluster)
    async with operator(config):
        await apply(cluster, doc)
        await until(lambda: "r-solve-0" in ctl.jobs(), what="the second stage, straight away")
        await until(lambda: stage_phase(cluster, "solve") == "Waiting", what="the status")
    corpus_status = status(cluster, "ml", "r")["stages"]["corpus"]
    assert (corpus_status["phase"], corpus_status["costUSD"], corpus_status["attempts"]) == ("Cached", 0.0, 0)
    assert corpus_status["output"] == "s3://runs/ml/r/corpus/"
    assert set(ctl.jobs()) == {"r-solve-0"}  # no Job for the cached stage
