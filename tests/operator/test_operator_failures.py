"""Failures, preemption, budget, suspend/resume, invalid recipes and scoping, with the real operator."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from tests.support.operator_harness import (
    JOBS,
    RECIPES,
    T0,
    Cluster,
    JobController,
    apply,
    events,
    live,
    operator,
    patch_spec,
    small_recipe,
    stage_phase,
    status,
    until,
)

pytestmark = [pytest.mark.kmock(cls=Cluster), pytest.mark.asyncio, pytest.mark.timeout(60)]


def condition(cluster, kind: str, name: str = "r") -> dict:
    return next(c for c in status(cluster, "ml", name)["conditions"] if c["type"] == kind)


async def test_a_failing_stage_retries_after_backoff_then_fails_with_the_pods_message(cluster, clock, config):
    ctl = JobController(cluster)
    async with operator(config):
        await apply(cluster, small_recipe())
        at = await ctl.run("r-corpus-0", T0, 1, clock)
        at = await ctl.run("r-solve-0", at, 1, clock)
        at = await ctl.run("r-chains-0", at, 1, clock)
        await until(lambda: "r-sft-0" in ctl.jobs(), what="sft attempt 0")
        await ctl.start("r-sft-0", at)
        failed_at = at + timedelta(minutes=30)
        clock.now = failed_at
        await ctl.fail("r-sft-0", failed_at, message="torch.OutOfMemoryError: CUDA out of memory")
        await until(lambda: status(cluster, "ml", "r")["stages"]["sft"].get("nextRetryTime"), what="sft in backoff")
        assert status(cluster, "ml", "r")["stages"]["sft"]["nextRetryTime"] == "2026-03-01T15:31:00Z"
        assert stage_phase(cluster, "sft") == "Waiting"
        clock.now = failed_at + timedelta(seconds=59)
        await asyncio.sleep(0.8)  # a few timer ticks: still inside the backoff
        assert "r-sft-1" not in ctl.jobs()
        clock.now = failed_at + timedelta(seconds=61)
        await until(lambda: "r-sft-1" in ctl.jobs(), what="sft attempt 1 after the backoff")
        await ctl.start("r-sft-1", clock.now)
        clock.now += timedelta(minutes=30)
        await ctl.fail("r-sft-1", clock.now, message="torch.OutOfMemoryError: CUDA out of memory (again)")
        await until(lambda: status(cluster, "ml", "r").get("phase") == "Failed", what="recipe Failed")
        await until(lambda: events(cluster, name="r")[-1][1] == "RecipeFailed", what="RecipeFailed event")

    sft = status(cluster, "ml", "r")["stages"]["sft"]
    assert (sft["phase"], sft["attempts"], sft["failures"]) == ("Failed", 2, 2)
    assert sft["message"] == ("failed after 2 attempts: pod r-sft-1-0-pod: Error (exit code 1): "
                              "torch.OutOfMemoryError: CUDA out of memory (again)")
    assert sft["wastedGPUHours"] == 8.0 and status(cluster, "ml", "r")["cost"]["wastedUSD"] == 16.0  # 2 x 0.5 h x 8 GPUs x $2
    failed = condition(cluster, "Failed")
    assert failed["status"] == "True" and "CUDA out of memory (again)" in failed["message"]
    warnings = [(reason, message) for kind, reason, message in events(cluster, name="r") if kind == "Warning"]
    assert [r for r, _ in warnings] == ["AttemptFailed", "StageFailed", "RecipeFailed"]
    assert "retry 1 of 1" in warnings[0][1]
    assert set(ctl.jobs()) == {"r-corpus-0", "r-solve-0", "r-chains-0", "r-sft-0", "r-sft-1"}


async def test_a_preempted_attempt_is_retried_at_once_without_using_retries(cluster, clock, config):
    ctl = JobController(cluster)
    async with operator(config):
        await apply(cluster, small_recipe())
        at = await ctl.run("r-corpus-0", T0, 1, clock)
        await until(lambda: "r-solve-0" in ctl.jobs(), what="solve")
        await ctl.start("r-solve-0", at)
        clock.now = at + timedelta(minutes=15)
        await ctl.preempt("r-solve-0", clock.now, reason="EvictionByEvictionAPI")
        await until(lambda: "r-solve-1" in ctl.jobs(), what="solve attempt 1, with no backoff")
        await ctl.start("r-solve-1", clock.now)
        await until(lambda: stage_phase(cluster, "solve") == "Running", what="solve running again")
        await until(lambda: any(r == "AttemptPreempted" for _, r, _ in events(cluster, name="r")), what="event")

    solve = status(cluster, "ml", "r")["stages"]["solve"]
    assert (solve["attempts"], solve["failures"], solve["preemptions"]) == (2, 0, 1)
    assert solve["wastedGPUHours"] == 4.0  # 2 pods x 8 GPUs x 15 min
    assert solve["history"][0]["outcome"] == "Preempted"
    assert "EvictionByEvictionAPI" in solve["history"][0]["message"]


async def test_budget_stop_all_suspends_running_jobs_and_a_raise_resumes_them(cluster, clock, config):
    ctl = JobController(cluster)
    async with operator(config):
        await apply(cluster, small_recipe(budgetUSD=20, budgetPolicy="stop-all"))
        at = await ctl.run("r-corpus-0", T0, 1, clock)
        await until(lambda: "r-solve-0" in ctl.jobs(), what="solve")
        await ctl.start("r-solve-0", at)
        clock.now = at + timedelta(hours=1)  # $32 of GPU time on top of $0.20
        await until(lambda: ctl.job("r-solve-0")["spec"]["suspend"] is True, what="solve suspended")
        await until(lambda: status(cluster, "ml", "r").get("phase") == "Failed", what="phase Failed (budget)")
        exceeded = condition(cluster, "BudgetExceeded")
        assert exceeded["status"] == "True"
        assert exceeded["message"] == ("spent $32.20 of $20.00 (running stages included): no new stages start; "
                                       "running stages suspended")
        assert condition(cluster, "Failed")["reason"] == "BudgetExceeded"
        await until(lambda: ("Warning", "BudgetExceeded", exceeded["message"]) in events(cluster, name="r"),
                    what="the BudgetExceeded event")
        await patch_spec(cluster, "ml", "r", {"budgetUSD": 500})
        await until(lambda: ctl.job("r-solve-0")["spec"]["suspend"] is False, what="solve resumed")
        await until(lambda: condition(cluster, "BudgetExceeded")["status"] == "False", what="within budget")
        assert status(cluster, "ml", "r")["observedGeneration"] == 2


async def test_suspend_suspends_running_jobs_starts_nothing_and_resume_continues(cluster, clock, config):
    ctl = JobController(cluster)
    async with operator(config):
        await apply(cluster, small_recipe())
        await until(lambda: "r-corpus-0" in ctl.jobs(), what="corpus")
        await ctl.start("r-corpus-0", T0)
        await patch_spec(cluster, "ml", "r", {"suspend": True})
        await until(lambda: ctl.job("r-corpus-0")["spec"]["suspend"] is True, what="corpus suspended")
        await until(lambda: status(cluster, "ml", "r").get("phase") == "Suspended", what="phase Suspended")
        assert condition(cluster, "Suspended")["status"] == "True"
        assert stage_phase(cluster, "corpus") == "Suspended"
        await patch_spec(cluster, "ml", "r", {"suspend": False})
        await until(lambda: ctl.job("r-corpus-0")["spec"]["suspend"] is False, what="corpus resumed")
        await ctl.succeed("r-corpus-0", T0 + timedelta(hours=1))
        await until(lambda: "r-solve-0" in ctl.jobs(), what="the next stage after resuming")
        reasons = [r for _, r, _ in events(cluster, name="r")]
        assert reasons.index("Suspended") < reasons.index("Resumed")


async def test_an_invalid_recipe_is_marked_invalid_and_gets_no_jobs(cluster, config):
    doc = small_recipe()
    doc["spec"]["stages"][2]["data"] = "solv"
    async with operator(config):
        await apply(cluster, doc)
        await until(lambda: status(cluster, "ml", "r").get("phase") == "Failed", what="phase Failed")
        invalid = condition(cluster, "Invalid")
        assert (invalid["status"], invalid["reason"]) == ("True", "InvalidSpec")
        assert invalid["message"] == 'spec.stages[2].data: no stage named "solv" (did you mean "solve"?)'
        await until(lambda: events(cluster, name="r"), what="the Invalid event")
        assert events(cluster, name="r") == [("Warning", "Invalid", invalid["message"])]
        await asyncio.sleep(0.5)
        assert live(cluster, JOBS) == {}
        await patch_spec(cluster, "ml", "r", {"stages": small_recipe()["spec"]["stages"]})  # fixed
        await until(lambda: "r-corpus-0" in live(cluster, JOBS), what="Jobs once the recipe is valid")
        await until(lambda: condition(cluster, "Invalid")["status"] == "False", what="Valid again")


async def test_a_namespaced_operator_ignores_other_namespaces_and_deletion_releases_the_recipe(cluster, config):
    async with operator(config, namespaces=["team-a"]):
        await apply(cluster, small_recipe(namespace="team-a"))
        await apply(cluster, small_recipe(namespace="team-b"))
        await until(lambda: "r-corpus-0" in live(cluster, JOBS, "team-a"), what="team-a's Job")
        await asyncio.sleep(0.5)
        assert live(cluster, JOBS, "team-b") == {} and status(cluster, "team-b", "r") == {}
        resp = await cluster.delete("/apis/fathom.dev/v1alpha1/namespaces/team-a/fathomrecipes/r")
        assert resp.status == 200
        # The finalizer goes once the recipe's worker stopped; the API server (here kmock) then deletes it.
        await until(lambda: cluster._objects._objects[__import__("kmock").resource(RECIPES), "team-a", "r"].deleted,
                    what="the recipe deleted")
