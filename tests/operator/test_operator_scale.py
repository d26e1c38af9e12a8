"""Many recipes at once, and a quiet cluster that stays quiet."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from tests.support.operator_harness import (
    T0,
    Clock,
    Cluster,
    JobController,
    apply,
    creates,
    make_config,
    operator,
    small_recipe,
    stage_phase,
    status,
    status_patches,
    until,
    write_kubeconfig,
)

pytestmark = [pytest.mark.kmock(cls=Cluster), pytest.mark.asyncio, pytest.mark.timeout(120)]
NAMESPACES = [f"team-{i}" for i in range(5)]


async def test_fifty_recipes_in_five_namespaces_run_side_by_side(cluster, tmp_path):
    clock = Clock()
    config = make_config(write_kubeconfig(tmp_path / "kubeconfig", cluster.url), clock, tmp_path / "store",
                         resync_seconds=1.0)
    recipes = [(ns, f"r{i}") for ns in NAMESPACES for i in range(10)]
    async with operator(config):
        await asyncio.gather(*(apply(cluster, small_recipe(name, ns)) for ns, name in recipes))
        controllers = {ns: JobController(cluster, ns) for ns in NAMESPACES}
        await until(lambda: all(f"{name}-corpus-0" in controllers[ns].jobs() for ns, name in recipes), timeout=60,
                    what="50 first-stage Jobs")

        async def first_stage(ns: str, name: str) -> None:
            await controllers[ns].start(f"{name}-corpus-0", T0)
            await controllers[ns].succeed(f"{name}-corpus-0", T0 + timedelta(hours=2))

        await asyncio.gather(*(first_stage(ns, name) for ns, name in recipes))
        await until(lambda: all(f"{name}-solve-0" in controllers[ns].jobs() for ns, name in recipes), timeout=60,
                    what="50 second-stage Jobs")
        await until(lambda: all(stage_phase(cluster, "corpus", ns, name) == "Succeeded" for ns, name in recipes),
                    what="50 statuses")
    for ns, name in recipes:
        assert status(cluster, ns, name)["cost"]["usd"] == 0.40  # 2 h x 4 CPUs x $0.05
        assert set(controllers[ns].jobs()) >= {f"{name}-corpus-0", f"{name}-solve-0"}
    assert len(creates(cluster)) == 100  # 50 recipes x 2 Jobs, each once


async def test_a_quiet_cluster_gets_no_status_patches_however_long_it_waits(cluster, tmp_path):
    clock = Clock()
    config = make_config(write_kubeconfig(tmp_path / "kubeconfig", cluster.url), clock, tmp_path / "store",
                         resync_seconds=0.05)
    one_stage = small_recipe("done")
    one_stage["spec"]["stages"] = one_stage["spec"]["stages"][:1]
    invalid = small_recipe("broken")
    invalid["spec"]["stages"][1]["pool"] = "h200"
    ctl = JobController(cluster)
    async with operator(config):
        for doc in (one_stage, invalid, small_recipe("waiting"), small_recipe("paused", suspend=True)):
            await apply(cluster, doc)
        await ctl.run("done-corpus-0", T0, 1, clock)
        await until(lambda: status(cluster, "ml", "done").get("phase") == "Succeeded", what="done")
        await until(lambda: stage_phase(cluster, "corpus", "ml", "waiting") == "Waiting", what="waiting")
        await until(lambda: status(cluster, "ml", "broken").get("phase") == "Failed", what="broken")
        await until(lambda: status(cluster, "ml", "paused").get("phase") == "Suspended", what="paused")
        await asyncio.sleep(0.5)
        before = status_patches(cluster)
        for _ in range(12):  # an hour on the operator's clock, ~40 timer ticks per recipe
            clock.now += timedelta(minutes=5)
            await asyncio.sleep(0.15)
        assert status_patches(cluster) == before
        assert set(ctl.jobs()) == {"done-corpus-0", "waiting-corpus-0"}
