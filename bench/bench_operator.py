"""Operator scale: N recipes applied at once -> seconds until every first-stage Job exists.

The operator runs as `fathom operator -A` in a subprocess (so its peak RSS and CPU are its own)
against the kmock emulator served from this process (tests/support/operator_harness.Cluster: kmock with
uid/resourceVersion bookkeeping and without its quadratic request log). Every recipe is the full
Fathom-R1-14B example (10 stages) with its store on local disk, `cache: true` (so each first stage
also does its memo check against the store), spread over 10 namespaces.

Reported per N: seconds from the first apply until all N first-stage Jobs exist, seconds until
every recipe's status shows it, API requests per recipe made by the operator until then (watch
streams count once), and the operator's peak RSS and CPU seconds.

    .venv/bin/python bench/bench_operator.py            # N = 1, 10, 100, 500
    .venv/bin/python bench/bench_operator.py 50 200     # other sizes
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import copy
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import kmock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fathom_operator.api.recipe import API_VERSION  # noqa: E402
from tests.support.helpers import example  # noqa: E402
from tests.support.operator_harness import Cluster, setup_cluster, write_kubeconfig  # noqa: E402

NAMESPACES = 10
RECIPES = kmock.resource("fathom.dev/v1alpha1/fathomrecipes")
JOBS = kmock.resource("batch/v1/jobs")


def proc_stats(pid: int) -> tuple[float, float]:
    """(peak RSS in MB, CPU seconds) of a live process."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            rss = int(line.split()[1]) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss, (int(fields[11]) + int(fields[12])) / ticks


def recipes(n: int, store: Path) -> list[dict]:
    base = example("fathom-r1-14b.yaml")
    base["spec"]["storage"] = {"uri": f"file://{store}"}
    base["spec"]["cache"] = True
    docs = []
    for i in range(n):
        doc = copy.deepcopy(base)
        doc["metadata"] = {"name": f"bench-{i:04d}", "namespace": f"ns-{i % NAMESPACES}"}
        docs.append(doc)
    return docs


async def run(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        async with Cluster() as cluster, kmock.Server(cluster):
            setup_cluster(cluster)
            kubeconfig = write_kubeconfig(Path(tmp) / "kubeconfig", cluster.url)
            env = {**os.environ, "FATHOM_RESYNC_SECONDS": "30", "PYTHONUNBUFFERED": "1"}
            log = open(Path(tmp) / "operator.log", "w")
            command = [str(ROOT / ".venv" / "bin" / "fathom"), "operator", "-A", "--kubeconfig", kubeconfig]
            if os.environ.get("BENCH_PROFILE"):  # cProfile the operator's event loop into this file
                command = [sys.executable, "-m", "cProfile", "-o", os.environ["BENCH_PROFILE"],
                           "-m", "fathom_operator.cli", *command[1:]]
            proc = subprocess.Popen(command,
                                    env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                # Ready = it watches recipes (kopf has listed everything).
                while not any(c[:2] == ("GET", "fathomrecipes") for c in cluster.calls):
                    if proc.poll() is not None:
                        raise RuntimeError(f"the operator exited: {(Path(tmp) / 'operator.log').read_text()[-2000:]}")
                    await asyncio.sleep(0.05)
                await asyncio.sleep(1.0)
                before = len(cluster.calls)
                docs = recipes(n, Path(tmp) / "store")
                started = time.monotonic()
                responses = await asyncio.gather(*(cluster.post(
                    f"/apis/{API_VERSION}/namespaces/{d['metadata']['namespace']}/fathomrecipes", json=d) for d in docs))
                assert all(r.status in (200, 201) for r in responses)
                wanted = {(d["metadata"]["namespace"], f"{d['metadata']['name']}-corpus-0") for d in docs}
                objects = cluster._objects._objects
                while not all((JOBS, ns, job) in objects for ns, job in wanted):
                    if time.monotonic() - started > 600:
                        raise RuntimeError("timed out")
                    await asyncio.sleep(0.05)
                jobs_at = time.monotonic() - started

                def reported() -> bool:
                    for d in docs:
                        obj = objects.get((RECIPES, d["metadata"]["namespace"], d["metadata"]["name"]))
                        stages = ((obj.raw.get("status") or {}).get("stages") or {}) if obj is not None else {}
                        if stages.get("corpus", {}).get("job") is None:
                            return False
                    return True

                while not reported():
                    await asyncio.sleep(0.05)
                status_at = time.monotonic() - started
                await asyncio.sleep(2.0)  # let the echoes settle before counting requests
                calls = [c for c in cluster.calls[before:] if not (c[0] == "POST" and c[1] == "fathomrecipes")]
                by_kind = collections.Counter(f"{c[0]} {c[1]}{'/' + c[2] if c[2] else ''}" for c in calls)
                rss, cpu = proc_stats(proc.pid)
            finally:
                proc.send_signal(2)  # SIGINT: a graceful stop (and a written profile)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                log.close()
    return {"n": n, "jobs_s": jobs_at, "status_s": status_at, "requests_per_recipe": len(calls) / n,
            "rss_mb": rss, "cpu_s": cpu, "by_kind": dict(by_kind)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[1, 10, 100, 500],
                        help="numbers of recipes applied at once (default: 1 10 100 500)")
    sizes = parser.parse_args().sizes
    print(f"{'N':>5}  {'jobs s':>7}  {'status s':>8}  {'req/recipe':>10}  {'peak RSS MB':>11}  {'CPU s':>6}")
    for n in sizes:
        result = asyncio.run(run(n))
        print(f"{n:>5}  {result['jobs_s']:>7.2f}  {result['status_s']:>8.2f}  {result['requests_per_recipe']:>10.1f}"
              f"  {result['rss_mb']:>11.0f}  {result['cpu_s']:>6.1f}", flush=True)
        print(f"       requests: {result['by_kind']}", flush=True)


if __name__ == "__main__":
    main()
