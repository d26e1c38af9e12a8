"""`fathom retry`: a Failed stage runs again with a fresh retry budget, through an annotation the
operator acts on once (status.retried), without touching the spec."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from fathom_operator import cli
from fathom_operator.retry import ANNOTATION_RETRY, decide
from tests.support.operator_harness import (
    RECIPES,
    T0,
    Cluster,
    JobController,
    apply,
    events,
    operator,
    recipe,
    small_recipe,
    stage_phase,
    status,
    until,
)

pytestmark = [pytest.mark.kmock(cls=Cluster), pytest.mark.asyncio, pytest.mark.timeout(90)]


async def fathom(config, *argv: str) -> int:
    return await asyncio.to_thread(cli.main, [*argv, "-n", "ml", "--kubeconfig", config.kubeconfig])


async def annotate(cluster, value: str) -> None:
    resp = await cluster.patch(f"/apis/{RECIPES.rsplit('/', 1)[0]}/namespaces/ml/fathomrecipes/r",
                               json={"metadata": {"annotations": {ANNOTATION_RETRY: value}}},
                               headers={"Content-Type": "application/merge-patch+json"})
    assert resp.status == 200, await resp.text()


def reasons(cluster) -> list[str]:
    return [r for _, r, _ in events(cluster, name="r")]


async def failed_solve(cluster, clock, ctl) -> None:
    doc = small_recipe()
    doc["spec"]["stages"][1]["retries"] = 0
    await apply(cluster, doc)
    at = await ctl.run("r-corpus-0", T0, 1, clock)
    await until(lambda: "r-solve-0" in ctl.jobs(), what="solve")
    await ctl.start("r-solve-0", at)
    clock.now = at + timedelta(minutes=10)
    await ctl.fail("r-solve-0", clock.now, message="CUDA error: an illegal memory access")
    await until(lambda: status(cluster, "ml", "r").get("phase") == "Failed", what="recipe Failed")


async def test_retry_reruns_a_failed_stage_and_its_downstream_with_a_fresh_budget(cluster, clock, config, capsys):
    ctl = JobController(cluster)
    async with operator(config):
        await failed_solve(cluster, clock, ctl)
        assert stage_phase(cluster, "chains") == "Skipped"
        spec_before = recipe(cluster, "ml", "r")["spec"]
        assert await fathom(config, "retry", "r", "solve") == 0
        value = recipe(cluster, "ml", "r")["metadata"]["annotations"][ANNOTATION_RETRY]
        assert value.startswith("solve@") and value in capsys.readouterr().out
        await until(lambda: "r-solve-1" in ctl.jobs(), what="solve attempt 1, at once")
        await until(lambda: status(cluster, "ml", "r").get("retried") == value, what="status.retried")
        assert recipe(cluster, "ml", "r")["spec"] == spec_before  # GitOps: the spec is untouched
        solve = status(cluster, "ml", "r")["stages"]["solve"]
        assert (solve["failures"], solve["retryFrom"], solve["attempts"]) == (0, 1, 2)
        await until(lambda: "RetryRequested" in reasons(cluster), what="the RetryRequested event")  # posted async
        at = await ctl.run("r-solve-1", clock.now, 1, clock)
        await ctl.run("r-chains-0", at, 1, clock)  # downstream follows
        await until(lambda: "r-sft-0" in ctl.jobs(), what="sft")
        await asyncio.sleep(0.5)
        assert sorted(j for j in ctl.jobs() if j.startswith("r-solve")) == ["r-solve-0", "r-solve-1"]  # acted on once


async def test_a_second_retry_of_the_same_stage_is_a_new_value(cluster, clock, config):
    ctl = JobController(cluster)
    async with operator(config):
        await failed_solve(cluster, clock, ctl)
        assert await fathom(config, "retry", "r", "solve") == 0
        await until(lambda: "r-solve-1" in ctl.jobs(), what="solve attempt 1")
        await ctl.start("r-solve-1", clock.now)
        clock.now += timedelta(minutes=5)
        await ctl.fail("r-solve-1", clock.now, message="CUDA error again")
        await until(lambda: stage_phase(cluster, "solve") == "Failed", what="solve Failed again (budget 0)")
        assert await fathom(config, "retry", "r", "solve") == 0
        await until(lambda: "r-solve-2" in ctl.jobs(), what="solve attempt 2")


async def test_retry_refuses_unknown_running_and_succeeded_stages(cluster, clock, config, capsys):
    ctl = JobController(cluster)
    async with operator(config):
        await apply(cluster, small_recipe())
        at = await ctl.run("r-corpus-0", T0, 1, clock)
        await until(lambda: "r-solve-0" in ctl.jobs(), what="solve")
        await ctl.start("r-solve-0", at)
        await until(lambda: stage_phase(cluster, "solve") == "Running", what="solve running")
        capsys.readouterr()
        assert await fathom(config, "retry", "r", "sovle") == 1
        assert "no stage 'sovle'; its stages: corpus, solve, chains, sft" in capsys.readouterr().err
        assert await fathom(config, "retry", "r", "solve") == 1
        assert "solve is Running: it is still running" in capsys.readouterr().err
        assert await fathom(config, "retry", "r", "corpus") == 1
        assert "corpus is Succeeded: only a Failed stage can be retried" in capsys.readouterr().err
        assert await fathom(config, "retry", "nope", "solve") == 1
        assert ANNOTATION_RETRY not in (recipe(cluster, "ml", "r")["metadata"].get("annotations") or {})
        # Written by hand (or by an older CLI) while the stage runs: consumed with a Warning saying why.
        await annotate(cluster, "solve@manual")
        await until(lambda: status(cluster, "ml", "r").get("retried") == "solve@manual", what="consumed")
        refused = await until(lambda: [m for t, r, m in events(cluster, name="r")
                                       if (t, r) == ("Warning", "RetryRefused")], what="the RetryRefused event")
        assert "solve is running" in refused[0]
        await asyncio.sleep(0.4)
        assert "r-solve-1" not in ctl.jobs()
        assert reasons(cluster).count("RetryRefused") == 1


async def test_malformed_and_repeated_values_are_handled_once():
    def call(value, retried=None):
        return decide(value, retried, ["a", "b"], {"a": [], "b": ["a"]}, phase=lambda n: "Failed",
                      failed=lambda n: n == "a", running=lambda n: False, next_attempt=lambda n: 3)

    assert call(None) is None and call("a@1", retried="a@1") is None
    bad = call("a")
    assert bad.token == "a" and bad.event.reason == "RetryRefused" and not bad.reset
    good = call("a@2")
    assert good.reset == {"a": 3, "b": 3} and good.event.reason == "RetryRequested"
    long = call("a@" + "x" * 400)
    assert long.token.startswith("sha256:") and call("a@" + "x" * 400, retried=long.token) is None
