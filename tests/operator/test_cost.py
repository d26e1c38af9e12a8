"""Cost accounting (pure): pod run time x resources requested x the pool's price."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fathom_operator.cost import Price, attempt_usage, cost_table, rounded, usage
from fathom_operator.observe import attempt, observe_job, observe_pod

T0 = datetime(2026, 3, 1, tzinfo=UTC)
H100 = Price("nvidia.com/gpu", gpu_hour_usd=2.83)
CPU = Price("nvidia.com/gpu", cpu_hour_usd=0.04)
LABELS = {"fathom.dev/recipe": "r", "fathom.dev/stage": "sft", "fathom.dev/attempt": "0"}


def ts(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def job(parallelism: int = 1, gpus: int = 8, cpu: str = "128", **status) -> dict:
    requests = {"cpu": cpu, "memory": "1Ti", **({"nvidia.com/gpu": gpus} if gpus else {})}
    return {"metadata": {"name": "r-sft-0", "labels": LABELS},
            "spec": {"parallelism": parallelism, "template": {"spec": {"containers": [{"resources": {"requests": requests}}]}}},
            "status": status}


def pod(name: str, start: datetime, end: datetime | None = None, gpus: int = 8, cpu: str = "128") -> dict:
    requests = {"cpu": cpu, **({"nvidia.com/gpu": gpus} if gpus else {})}
    status = {"phase": "Running", "startTime": ts(start)}
    if end is not None:
        status = {"phase": "Succeeded", "startTime": ts(start), "containerStatuses": [
            {"state": {"terminated": {"exitCode": 0, "finishedAt": ts(end)}}}]}
    return {"metadata": {"name": name, "labels": LABELS},
            "spec": {"containers": [{"resources": {"requests": requests}}]}, "status": status}


def cost_of(job_body: dict, pods: list[dict], price: Price, now: datetime):
    return attempt_usage(attempt(observe_job(job_body), [observe_pod(p) for p in pods]), price, now)


def test_gpu_pods_cost_gpus_times_hours_times_price():
    # The seeds' Fathom-R1-14B-v0.4 SFT: 2 nodes x 8 H100 x 8 h = 128 GPU-hours = $362.24.
    pods = [pod("p0", T0, T0 + timedelta(hours=8)), pod("p1", T0, T0 + timedelta(hours=8))]
    used = cost_of(job(parallelism=2), pods, H100, T0 + timedelta(days=3))
    assert (rounded(used.gpu_hours), rounded(used.usd)) == (128.0, 362.24)


def test_a_running_pod_costs_until_now():
    used = cost_of(job(), [pod("p0", T0)], H100, T0 + timedelta(minutes=90))
    assert (used.gpu_hours, rounded(used.usd)) == (12.0, 33.96)


def test_cpu_pools_are_priced_per_cpu_hour():
    used = cost_of(job(gpus=0, cpu="500m"), [pod("p0", T0, T0 + timedelta(hours=10), gpus=0, cpu="500m")], CPU, T0)
    assert (used.gpu_hours, rounded(used.usd)) == (0.0, 0.2)  # 0.5 CPU x 10 h x $0.04


def test_a_pod_not_yet_started_costs_nothing():
    pending = pod("p0", T0)
    del pending["status"]["startTime"]
    assert cost_of(job(), [pending], H100, T0 + timedelta(hours=1)).usd == 0.0


def test_when_pods_are_gone_the_jobs_own_times_stand_in():
    finished = job(parallelism=4, startTime=ts(T0), completionTime=ts(T0 + timedelta(hours=2)),
                   conditions=[{"type": "Complete", "status": "True"}])
    used = cost_of(finished, [], H100, T0 + timedelta(days=1))
    assert (used.gpu_hours, rounded(used.usd)) == (64.0, 181.12)  # 4 pods x 8 GPUs x 2 h


def test_rounding_is_half_up_to_the_cent():
    assert rounded(2.675) == 2.68 and rounded(0.125) == 0.13 and rounded(1.0049999) == 1.0
    assert usage(3600, {"nvidia.com/gpu": 1}, H100).usd == 2.83


def test_cost_table_reads_like_the_seeds_table():
    status = {"phase": "Running", "stages": {
        "sft-curriculum": {"phase": "Succeeded", "gpuHours": 48.0, "costUSD": 135.84},
        "sft-shortest": {"phase": "Running", "gpuHours": 128.0, "costUSD": 362.24}},
        "cost": {"gpuHours": 176.0, "usd": 498.08, "wastedGPUHours": 8.0, "wastedUSD": 22.64}}
    table = cost_table("fathom-r1-14b", status, budget=2500)
    assert table.splitlines() == [
        "fathom-r1-14b (budget $2,500.00)",
        "STAGE              PHASE      GPU-HOURS      USD",
        "sft-curriculum     Succeeded      48.00  $135.84",
        "sft-shortest       Running       128.00  $362.24",
        "------------------------------------------------",
        "total              Running       176.00  $498.08",
        "  of which wasted                  8.00   $22.64",
    ]
