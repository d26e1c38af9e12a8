"""`fathom logs` (pods by label, prefixed by index; the store once they are gone) and `fathom report --kubeconfig`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fathom_jobs.joblog import log_uri
from fathom_operator import cli
from fathom_operator.logs import choose_stage, latest_attempt
from fathom_operator.render import LABEL_ATTEMPT, LABEL_RECIPE, LABEL_STAGE
from tests.support.operator_harness import Cluster, apply, small_recipe, write_kubeconfig

pytestmark = [pytest.mark.kmock(cls=Cluster), pytest.mark.asyncio, pytest.mark.timeout(60)]


async def set_status(cluster, status: dict) -> None:
    resp = await cluster.patch("/apis/fathom.dev/v1alpha1/namespaces/ml/fathomrecipes/r/status",
                               json={"status": status}, headers={"Content-Type": "application/merge-patch+json"})
    assert resp.status == 200, await resp.text()


async def add_pod(cluster, name: str, stage: str, attempt: int, index: int, log: str) -> None:
    labels = {LABEL_RECIPE: "r", LABEL_STAGE: stage, LABEL_ATTEMPT: str(attempt),
              "batch.kubernetes.io/job-completion-index": str(index)}
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "ml", "labels": labels},
            "spec": {"containers": [{"name": "stage", "image": "x"}]}}
    resp = await cluster.post("/api/v1/namespaces/ml/pods", json=body)
    assert resp.status in (200, 201), await resp.text()
    cluster[f"get /api/v1/namespaces/ml/pods/{name}/log"] << log.encode()  # kmock stores no logs: serve them


async def fathom(tmp_path: Path, cluster, *argv: str) -> int:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", cluster.url)
    return await asyncio.to_thread(cli.main, [*argv, "-n", "ml", "--kubeconfig", kubeconfig])


async def test_logs_of_every_pod_of_the_latest_attempt_prefixed_by_index(cluster, tmp_path, capsys):
    await apply(cluster, small_recipe())
    await set_status(cluster, {"stages": {"corpus": {"phase": "Succeeded", "job": "r-corpus-0"},
                                          "solve": {"phase": "Running", "job": "r-solve-1"}}})
    await add_pod(cluster, "r-solve-1-b", "solve", 1, 1, "shard one\nsampling 50%\n")
    await add_pod(cluster, "r-solve-1-a", "solve", 1, 0, "shard zero\n")
    await add_pod(cluster, "r-solve-0-a", "solve", 0, 0, "an older attempt\n")
    assert await fathom(tmp_path, cluster, "logs", "r") == 0  # no stage: the running one
    assert capsys.readouterr().out == "[0] shard zero\n[1] shard one\n[1] sampling 50%\n"
    assert await fathom(tmp_path, cluster, "logs", "r", "solve", "--attempt", "0") == 0
    assert capsys.readouterr().out == "[0] an older attempt\n"
    assert await fathom(tmp_path, cluster, "logs", "r", "sovle") == 1
    assert "no stage 'sovle'; its stages: corpus, solve, chains, sft" in capsys.readouterr().err


async def test_logs_come_from_the_store_once_the_pods_are_gone(cluster, tmp_path, capsys):
    store = tmp_path / "runs"
    await apply(cluster, small_recipe(storage={"uri": f"file://{store}"}))
    await set_status(cluster, {"stages": {"corpus": {"phase": "Succeeded", "job": "r-corpus-0"},
                                          "solve": {"phase": "Failed", "job": "r-solve-2"}}})
    output = f"file://{store}/ml/r/solve/"
    for index, text in ((0, "loading model\nCUDA error: out of memory\n"), (1, "shard one was fine\n")):
        path = Path(log_uri(output, 2, index)[len("file://"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert await fathom(tmp_path, cluster, "logs", "r") == 0  # no stage running: the failed one
    assert capsys.readouterr().out == "[0] loading model\n[0] CUDA error: out of memory\n[1] shard one was fine\n"
    assert await fathom(tmp_path, cluster, "logs", "r", "solve", "--attempt", "1") == 1
    assert "no log is in the store" in capsys.readouterr().err


async def test_fathom_report_takes_a_kubeconfig(cluster, tmp_path, capsys):
    await apply(cluster, small_recipe())
    await set_status(cluster, {"phase": "Running", "stages": {"corpus": {"phase": "Succeeded", "gpuHours": 0.0,
                                                                          "costUSD": 0.2}}})
    assert await fathom(tmp_path, cluster, "report", "r") == 0
    assert "ml/r (Running)" in capsys.readouterr().out


async def test_the_default_stage_and_attempt():
    status = {"stages": {"a": {"phase": "Succeeded", "job": "r-a-0"}, "b": {"phase": "Failed", "job": "r-b-3"},
                         "c": {"phase": "Skipped"}}}
    assert choose_stage(["a", "b", "c"], status) == "b"
    assert choose_stage(["a", "c"], status) == "a"
    assert choose_stage(["c"], status) is None
    assert latest_attempt({"history": [{"attempt": 0}, {"attempt": 4}]}) == 4
    assert latest_attempt(status["stages"]["b"]) == 3


async def test_follow_streams_every_pod_at_once(cluster, tmp_path, capsys):
    await apply(cluster, small_recipe())
    await set_status(cluster, {"stages": {"solve": {"phase": "Running", "job": "r-solve-0"}}})
    await add_pod(cluster, "r-solve-0-a", "solve", 0, 0, "zero\n")
    await add_pod(cluster, "r-solve-0-b", "solve", 0, 1, "one\n")
    assert await fathom(tmp_path, cluster, "logs", "r", "solve", "-f") == 0
    assert sorted(capsys.readouterr().out.splitlines()) == ["[0] zero", "[1] one"]
