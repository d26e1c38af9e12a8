"""A killed operator leaves a state the next one completes: no Job twice, the same final status.

"Killed" = the operator's thread loses its event loop mid-flight (in-memory state gone, no graceful
shutdown), sometimes with the status patch that should have followed a Job creation lost.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest

from tests.support.operator_harness import (
    T0,
    Clock,
    Cluster,
    JobController,
    Operator,
    apply,
    creates,
    make_config,
    small_recipe,
    stage_phase,
    status,
    until,
    write_kubeconfig,
)

pytestmark = [pytest.mark.kmock(cls=Cluster), pytest.mark.asyncio, pytest.mark.timeout(90)]


def status_patch_in(namespace: str) -> Callable[[Any], bool]:
    return lambda request: request.subresource == "status" and request.namespace == namespace


async def test_killed_between_creating_a_job_and_patching_the_status(cluster, tmp_path):
    config = make_config(write_kubeconfig(tmp_path / "kubeconfig", cluster.url), Clock(), tmp_path / "store")
    ctl = JobController(cluster)
    cluster.faults.append(status_patch_in("ml"))
    first = await Operator(config, ["ml"]).start()
    await apply(cluster, small_recipe())
    await until(lambda: "r-corpus-0" in ctl.jobs(), what="the Job")
    await until(lambda: any(c[:3] == ("PATCH", "fathomrecipes", "status") for c in cluster.calls), what="a patch try")
    await first.kill()
    assert status(cluster, "ml", "r") == {}  # the status never made it
    cluster.faults.clear()
    second = await Operator(config, ["ml"]).start()
    await until(lambda: stage_phase(cluster, "corpus") == "Waiting", what="the status")
    await asyncio.sleep(0.5)
    await second.stop()
    assert creates(cluster) == ["r-corpus-0"]  # the restarted operator found it; nothing created twice
    assert set(ctl.jobs()) == {"r-corpus-0"}
    assert status(cluster, "ml", "r")["stages"]["corpus"]["attempts"] == 1


class Session:
    """The operator of one namespace, and (when `kills`) a kill + restart at each bounce."""

    def __init__(self, config: Any, namespace: str, kills: bool) -> None:
        self.config, self.namespace, self.kills = config, namespace, kills
        self.operator: Operator | None = None
        self.bounces = 0

    async def start(self) -> None:
        self.operator = await Operator(self.config, [self.namespace]).start()

    async def bounce(self, while_down: Callable[[], Awaitable[Any]] | None = None) -> None:
        if self.kills:
            await self.operator.kill()
            self.bounces += 1
        if while_down is not None:
            await while_down()
        if self.kills:
            await self.start()


async def scenario(cluster: Cluster, namespace: str, config: Any, clock: Clock, kills: bool) -> dict[str, Any]:
    """The small recipe with a preemption and a failure; `kills` bounces the operator at four points."""
    ctl = JobController(cluster, namespace)
    session = Session(config, namespace, kills)
    await session.start()
    await apply(cluster, small_recipe(namespace=namespace))
    await until(lambda: "r-corpus-0" in ctl.jobs(), what="corpus")
    await ctl.start("r-corpus-0", T0)
    clock.now = T0 + timedelta(hours=1)
    await session.bounce(lambda: ctl.succeed("r-corpus-0", clock.now))  # it finished while the operator was down
    await until(lambda: "r-solve-0" in ctl.jobs(), what="solve")
    await ctl.start("r-solve-0", clock.now)
    clock.now += timedelta(minutes=15)
    await ctl.preempt("r-solve-0", clock.now)
    await session.bounce()  # killed around the preemption
    await until(lambda: "r-solve-1" in ctl.jobs(), what="solve attempt 1")
    end = await ctl.run("r-solve-1", clock.now, 1, clock)
    await session.bounce()  # killed while a stage finished
    end = await ctl.run("r-chains-0", end, 1, clock)
    await until(lambda: "r-sft-0" in ctl.jobs(), what="sft")
    await ctl.start("r-sft-0", end)
    clock.now = end + timedelta(minutes=30)
    await ctl.fail("r-sft-0", clock.now, message="NCCL error: unhandled system error")
    await until(lambda: status(cluster, namespace, "r")["stages"]["sft"].get("nextRetryTime"), what="backoff")
    if kills:  # the retry gets created, but the status patch after it is lost
        patches = len(cluster.calls)
        cluster.faults.append(status_patch_in(namespace))
    clock.now += timedelta(seconds=61)
    await until(lambda: "r-sft-1" in ctl.jobs(), what="sft attempt 1")
    if kills:
        await until(lambda: any(c[:4] == ("PATCH", "fathomrecipes", "status", namespace) for c in cluster.calls[patches:]),
                    what="the lost patch")

    async def heal() -> None:
        cluster.faults.clear()

    await session.bounce(heal)
    await ctl.run("r-sft-1", clock.now, 2, clock)
    await until(lambda: status(cluster, namespace, "r").get("phase") == "Succeeded", what="Succeeded")
    await session.operator.stop()
    assert session.bounces == (4 if kills else 0)
    return status(cluster, namespace, "r")


def normalized(value: Any, namespace: str) -> Any:
    """Without what differs by namespace alone (output URIs, spec fingerprints)."""
    text = json.dumps(value, sort_keys=True).replace(f"/{namespace}/", "/NS/")
    document = json.loads(text)

    def drop(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: drop(v) for k, v in node.items() if k != "fingerprint"}
        if isinstance(node, list):
            return [drop(v) for v in node]
        return node

    return drop(document)


async def test_killed_at_several_points_ends_exactly_like_an_uninterrupted_run(cluster, tmp_path):
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", cluster.url)
    clock_a, clock_b = Clock(), Clock()
    calm = await scenario(cluster, "calm", make_config(kubeconfig, clock_a, tmp_path / "a"), clock_a, kills=False)
    bumpy = await scenario(cluster, "bumpy", make_config(kubeconfig, clock_b, tmp_path / "b"), clock_b, kills=True)
    assert normalized(bumpy, "bumpy") == normalized(calm, "calm")
    assert bumpy["phase"] == "Succeeded" and bumpy["cost"]["wastedGPUHours"] == 8.0  # preempted 15 min + failed 30 min
    for namespace in ("calm", "bumpy"):
        made = JobController(cluster, namespace).jobs()
        assert set(made) == {"r-corpus-0", "r-solve-0", "r-solve-1", "r-chains-0", "r-sft-0", "r-sft-1"}
    # Each Job was created once: a restarted operator sees its Jobs before it decides anything.
    bumpy_creates = [name for method, plural, _, ns, name in cluster.calls
                     if (method, plural, ns) == ("POST", "jobs", "bumpy")]
    assert sorted(bumpy_creates) == sorted(set(bumpy_creates))
