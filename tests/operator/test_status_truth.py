"""The status tells the truth: an invalid recipe is Failed=True, a failing store read is visible."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fathom_operator.plan import Options
from tests.support.operator_harness import (
    T0,
    Cluster,
    JobController,
    apply,
    events,
    local_store,
    make_config,
    operator,
    small_recipe,
    stage_phase,
    status,
    until,
    write_kubeconfig,
)

pytestmark = [pytest.mark.kmock(cls=Cluster), pytest.mark.asyncio, pytest.mark.timeout(60)]


def condition(cluster, kind: str, name: str = "r") -> dict | None:
    return next((c for c in status(cluster, "ml", name).get("conditions", []) if c["type"] == kind), None)


async def test_an_invalid_recipe_is_failed_true_with_the_validation_errors(cluster, config):
    doc = small_recipe()
    doc["spec"]["stages"][1]["data"] = "corpuss"
    async with operator(config):
        await apply(cluster, doc)
        await until(lambda: condition(cluster, "Failed"), what="a Failed condition")
    st = status(cluster, "ml", "r")
    failed, invalid = condition(cluster, "Failed"), condition(cluster, "Invalid")
    assert st["phase"] == "Failed"
    assert (failed["status"], failed["reason"]) == ("True", "Invalid")
    assert failed["message"] == invalid["message"] and "spec.stages[1].data" in failed["message"]


async def test_a_recipe_that_turns_invalid_turns_failed_and_back(cluster, clock, config):
    from tests.support.operator_harness import patch_spec

    async with operator(config):
        await apply(cluster, small_recipe())
        await until(lambda: (condition(cluster, "Failed") or {}).get("status") == "False", what="Failed=False")
        await patch_spec(cluster, "ml", "r", {"budgetUSD": -1})
        await until(lambda: (condition(cluster, "Failed") or {}).get("reason") == "Invalid", what="Failed=True Invalid")
        assert condition(cluster, "Failed")["status"] == "True"
        await patch_spec(cluster, "ml", "r", {"budgetUSD": 100})
        await until(lambda: (condition(cluster, "Failed") or {}).get("status") == "False", what="Failed=False again")


class Flaky:
    """A store whose metrics.json cannot be read while `broken` is set (children included)."""

    def __init__(self, inner: Any, state: dict[str, bool]) -> None:
        self.inner, self.state = inner, state

    def child(self, rel: str) -> Flaky:
        return Flaky(self.inner.child(rel), self.state)

    def read_json(self, rel: str, **kw: Any) -> Any:
        if self.state["broken"] and rel.endswith("metrics.json"):
            raise OSError("connection reset by peer")
        return self.inner.read_json(rel, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_failing_store_read_is_a_stage_message_an_event_and_a_condition_until_it_succeeds(
        cluster, clock, tmp_path):
    state = {"broken": True}
    opener = local_store(tmp_path / "store")
    config = make_config(write_kubeconfig(tmp_path / "kubeconfig", cluster.url), clock, tmp_path / "store",
                         options=Options(backoff_seconds=60.0, retry_read_seconds=120.0))
    config.store_opener = lambda uri, **kw: Flaky(opener(uri, **kw), state)
    ctl = JobController(cluster)
    async with operator(config):
        await apply(cluster, small_recipe())
        await ctl.run("r-corpus-0", T0, 1, clock)
        await until(lambda: stage_phase(cluster, "corpus") == "Succeeded", what="corpus succeeded")
        await until(lambda: "connection reset" in (status(cluster, "ml", "r")["stages"]["corpus"].get("message") or ""),
                    what="the stage says its metrics are unreadable")
        readable = await until(lambda: condition(cluster, "StoreReadable"), what="StoreReadable condition")
        assert readable["status"] == "False" and "corpus" in readable["message"]
        warned = await until(lambda: [m for t, r, m in events(cluster, name="r")
                                      if (t, r) == ("Warning", "StoreReadFailed")], what="the Warning event")
        assert len(warned) == 1 and "connection reset" in warned[0]
        clock.advance(seconds=121)  # the read is retried: same error, no second event
        await asyncio.sleep(0.8)
        assert len([r for _, r, _ in events(cluster, name="r") if r == "StoreReadFailed"]) == 1
        state["broken"] = False
        clock.advance(seconds=121)
        await until(lambda: (condition(cluster, "StoreReadable") or {}).get("status") == "True", what="readable again")
        assert "connection reset" not in (status(cluster, "ml", "r")["stages"]["corpus"].get("message") or "")


async def test_the_operator_serves_kopfs_liveness_endpoint_and_names_itself_on_events(cluster, tmp_path):
    import json
    import os
    import signal
    import sys

    from tests.support.helpers import free_port, http_get
    from tests.support.operator_harness import EVENTS, live

    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", cluster.url)
    health = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fathom_operator.cli", "operator", "-n", "ml", "--kubeconfig", kubeconfig,
        "--liveness-port", str(health), "--resync-seconds", "1", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1", "POD_NAME": "fathom-abc"})
    try:
        await apply(cluster, small_recipe())
        await until(lambda: live(cluster, EVENTS, "ml"), timeout=40, what="an event")

        def probe() -> str | None:
            try:
                return http_get(f"http://127.0.0.1:{health}/healthz")
            except OSError:
                return None

        answer = await until(lambda: probe(), timeout=20, what="kopf's liveness endpoint")
        assert json.loads(answer) in ({"recipes": 0}, {"recipes": 1})  # the probe handler's answer
        event = next(iter(live(cluster, EVENTS, "ml").values()))
        assert (event["reportingComponent"], event["reportingInstance"]) == ("fathom-operator", "fathom-abc")
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, output.decode()[-3000:]
