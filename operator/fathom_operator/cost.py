"""What a stage attempt cost (pure): pod run time x resources requested x the pool's price.

Per pod: (termination time, or now while it runs) - start time, times the GPUs it requested times
the pool's `gpuHourUSD`, plus the CPUs it requested times `cpuHourUSD` (CPU pools). A pod starts
costing when the kubelet acknowledges it (`status.startTime`): the node is held from then on, image
pulls included. When an attempt's pods are gone, its Job's `startTime`..end x parallelism stands in.

Rounding: attempts are kept to 4 decimals, stages to the cent (USD, half up) and 2 decimals
(GPU-hours); totals are the sums of the rounded stage rows, so a cost table always adds up.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import MAX_EMAX, MIN_EMIN, ROUND_HALF_UP, Context, Decimal
from typing import Any

from .observe import Attempt


@dataclass(frozen=True)
class Price:
    gpu_resource: str = "nvidia.com/gpu"
    gpu_hour_usd: float = 0.0
    cpu_hour_usd: float = 0.0


@dataclass(frozen=True)
class Usage:
    gpu_hours: float = 0.0
    usd: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.gpu_hours + other.gpu_hours, self.usd + other.usd)


ZERO = Usage()


_WIDE = Context(prec=400, Emax=MAX_EMAX, Emin=MIN_EMIN)  # any finite float, to any places, exactly


def rounded(value: float, places: int = 2) -> float:
    """Half-up decimal rounding (2.675 -> 2.68, which float round() gets wrong). Never raises:
    validation bounds prices and budgets, and even past them any finite float rounds (a non-finite
    one is returned as it is)."""
    if not math.isfinite(value):
        return value
    quantum = Decimal(1).scaleb(-places)
    return float(Decimal(repr(value)).quantize(quantum, rounding=ROUND_HALF_UP, context=_WIDE))


def usage(seconds: float, requests: Mapping[str, float], price: Price, replicas: int = 1) -> Usage:
    hours = max(0.0, seconds) / 3600 * replicas
    gpu_hours = hours * requests.get(price.gpu_resource, 0.0)
    cpu_hours = hours * requests.get("cpu", 0.0)
    return Usage(gpu_hours, gpu_hours * price.gpu_hour_usd + cpu_hours * price.cpu_hour_usd)


def attempt_usage(attempt: Attempt, price: Price, now: datetime) -> Usage:
    """Cost of one attempt so far (final once it is terminal)."""
    started = [p for p in attempt.pods if p.start is not None]
    if started:
        total = ZERO
        for pod in started:
            assert pod.start is not None  # filtered above
            end = pod.end or (attempt.job.end if pod.phase in ("Failed", "Succeeded") else None) or now
            total += usage((end - pod.start).total_seconds(), dict(pod.requests), price)
        return total
    job = attempt.job
    if job.start is not None and job.end is not None:
        # Pods already garbage-collected: the Job's own run time for every parallel pod.
        return usage((job.end - job.start).total_seconds(), dict(job.requests), price, job.parallelism)
    return ZERO


def format_usd(value: float) -> str:
    return f"${value:,.2f}"


def cost_table(name: str, status: Mapping[str, Any], budget: float | None = None) -> str:
    """The seeds-style table of a recipe's status: one row per stage, then the total."""
    stages = status.get("stages") or {}
    cost = status.get("cost") or {}
    rows = [("STAGE", "PHASE", "GPU-HOURS", "USD")]
    for stage, st in stages.items():
        rows.append((stage, st.get("phase", ""), f"{st.get('gpuHours', 0.0):,.2f}", format_usd(st.get("costUSD", 0.0))))
    totals = [("total", status.get("phase", ""), f"{cost.get('gpuHours', 0.0):,.2f}", format_usd(cost.get("usd", 0.0)))]
    if cost.get("wastedGPUHours") or cost.get("wastedUSD"):
        totals.append(("  of which wasted", "", f"{cost.get('wastedGPUHours', 0.0):,.2f}",
                       format_usd(cost.get("wastedUSD", 0.0))))
    widths = [max(len(r[i]) for r in rows + totals) for i in range(4)]

    def line(r: tuple[str, ...]) -> str:
        return f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}".rstrip()

    body = [line(r) for r in rows]
    width = max(len(b) for b in body + [line(r) for r in totals])
    header = name + (f" (budget {format_usd(budget)})" if budget else "")
    return "\n".join([header, *body, "-" * width, *(line(r) for r in totals)]) + "\n"
