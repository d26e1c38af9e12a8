"""`fathom operator` (the real entry point, as a process) and `fathom cost`, against kmock."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest

from fathom_operator import cli
from tests.support.helpers import free_port, http_get
from tests.support.operator_harness import (
    Cluster,
    JobController,
    apply,
    small_recipe,
    stage_phase,
    until,
    write_kubeconfig,
)

pytestmark = [pytest.mark.kmock(cls=Cluster), pytest.mark.timeout(90)]



@pytest.mark.asyncio
async def test_fathom_operator_runs_namespaced_serves_metrics_and_stops_cleanly(cluster, tmp_path):
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", cluster.url)
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fathom_operator.cli", "operator", "-n", "ml", "--kubeconfig", kubeconfig,
        "--metrics-port", str(port), "--resync-seconds", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        await apply(cluster, small_recipe())
        await apply(cluster, small_recipe(namespace="elsewhere"))
        await until(lambda: "r-corpus-0" in JobController(cluster).jobs(), timeout=40, what="the first Job")
        await until(lambda: stage_phase(cluster, "corpus") == "Waiting", what="the status")
        assert JobController(cluster, "elsewhere").jobs() == {}  # namespace-scoped
        assert await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/healthz") == "ok\n"
        metrics = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/metrics")
        assert 'fathom_recipes{phase="Running"} 1.0' in metrics
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, output.decode()[-3000:]
    assert b"watching FathomRecipes in ml" in output


@pytest.mark.asyncio
async def test_fathom_cost_prints_the_table_from_the_cluster(cluster, tmp_path, capsys):
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", cluster.url)
    await apply(cluster, small_recipe(budgetUSD=100))
    status = {"phase": "Running", "stages": {
        "corpus": {"phase": "Succeeded", "gpuHours": 0.0, "costUSD": 0.2},
        "solve": {"phase": "Running", "gpuHours": 24.0, "costUSD": 48.0}},
        "cost": {"gpuHours": 24.0, "usd": 48.2, "wastedGPUHours": 4.0, "wastedUSD": 8.0}}
    resp = await cluster.patch("/apis/fathom.dev/v1alpha1/namespaces/ml/fathomrecipes/r/status", json={"status": status},
                               headers={"Content-Type": "application/merge-patch+json"})
    assert resp.status == 200
    code = await asyncio.to_thread(cli.main, ["cost", "r", "-n", "ml", "--kubeconfig", kubeconfig])
    assert code == 0
    assert capsys.readouterr().out.splitlines() == [
        "r (budget $100.00)",
        "STAGE              PHASE      GPU-HOURS     USD",
        "corpus             Succeeded       0.00   $0.20",
        "solve              Running        24.00  $48.00",
        "-----------------------------------------------",
        "total              Running        24.00  $48.20",
        "  of which wasted                  4.00   $8.00",
    ]
    code = await asyncio.to_thread(cli.main, ["cost", "nope", "-n", "ml", "--kubeconfig", kubeconfig])
    assert code == 1 and capsys.readouterr().err == "fathom: no FathomRecipe 'nope' in namespace 'ml'\n"


def test_fathom_cost_without_credentials_is_one_line_not_a_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["cost", "r", "--kubeconfig", str(tmp_path / "missing")])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("fathom: cannot load Kubernetes credentials:") and "Traceback" not in err
