"""FathomRecipe status: what `kubectl get/describe frecipe` and GitOps tools read.

Conditions follow the Kubernetes API conventions (type, status, reason, message,
lastTransitionTime, observedGeneration). Timestamps are RFC 3339 strings as the API server stores
them, so a status read back from the cluster compares equal to the one the operator would write.
"""

from __future__ import annotations

import typing
from typing import Any, Literal

from pydantic import Field

from fathom_jobs.specs import Spec

RecipePhase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]
StagePhase = Literal["Pending", "Waiting", "Running", "Succeeded", "Cached", "Failed", "Skipped", "Suspended"]
ConditionType = Literal["Ready", "Progressing", "Failed", "BudgetExceeded", "Suspended", "Invalid", "StoreReadable"]
CONDITION_TYPES: tuple[ConditionType, ...] = typing.get_args(ConditionType)


class Condition(Spec):
    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class StageProgress(Spec):
    fraction: float | None = Field(None, ge=0, le=1)
    step: int | None = None
    total: int | None = None
    eta_seconds: float | None = None
    message: str | None = None


AttemptOutcome = Literal["Succeeded", "Failed", "Preempted", "Superseded"]


class AttemptRecord(Spec):
    """One finished attempt. Kept so costs and retry counts survive deleted Jobs and restarts."""

    attempt: int = Field(ge=0)
    job: str
    outcome: AttemptOutcome
    fingerprint: str | None = Field(None, description="The stage's spec fingerprint the attempt ran with.")
    start_time: str | None = None
    completion_time: str | None = None
    gpu_hours: float = 0.0
    cost_usd: float = Field(0.0, alias="costUSD")
    message: str | None = None


class StageStatus(Spec):
    phase: StagePhase = "Pending"
    attempts: int = Field(0, ge=0, description="Attempts started; preempted ones included.")
    failures: int = Field(0, ge=0, description="Failed attempts that used the retry budget.")
    preemptions: int = Field(0, ge=0)
    job: str | None = Field(None, description="The current attempt's Job.")
    start_time: str | None = None
    completion_time: str | None = None
    next_retry_time: str | None = None
    retry_from: int | None = Field(None, ge=0, description="Set by `fathom retry`: failed attempts numbered below "
                                   "this no longer count against `retries`.")
    progress: StageProgress | None = None
    gpu_hours: float = 0.0
    cost_usd: float = Field(0.0, alias="costUSD")
    wasted_gpu_hours: float = Field(0.0, alias="wastedGPUHours", description="Failed and preempted attempts.")
    output: str | None = Field(None, description="Store URI of the stage's output.")
    fingerprint: str | None = None
    message: str | None = None
    metrics: dict[str, Any] | None = None
    history: list[AttemptRecord] = Field(
        default_factory=list, description="Finished attempts, oldest first; failed and preempted ones are the waste."
    )


class CostTotals(Spec):
    gpu_hours: float = 0.0
    usd: float = 0.0
    wasted_gpu_hours: float = Field(0.0, alias="wastedGPUHours")
    wasted_usd: float = Field(0.0, alias="wastedUSD")
    display: str = Field("$0.00", description="The Cost printer column, e.g. $1854.50.")


class StageForecastStatus(Spec):
    gpu_hours: float = 0.0
    usd: float = 0.0
    wall_seconds: int = 0
    basis: Literal["spent", "measured", "forecast"] = Field(
        "forecast", description="spent: the stage finished (its cost); measured: forecast from measured inputs.")


class ForecastStatus(Spec):
    """What the whole recipe will cost: finished stages at their cost, the rest forecast (`fathom estimate`)."""

    gpu_hours: float = 0.0
    usd: float = 0.0
    remaining_usd: float = Field(0.0, alias="remainingUSD", description="Forecast USD not yet spent.")
    wall_seconds: int = Field(0, description="The DAG's critical path, from the start.")
    display: str = Field("$0.00", description="The Forecast printer column.")
    stages: dict[str, StageForecastStatus] = Field(default_factory=dict)
    basis: list[str] = Field(default_factory=list, description="Assumptions and warnings, shortest first.")
    fingerprint: str | None = Field(None, description="Of what the forecast was made from: recomputed when it changes.")


class BenchmarkResult(Spec):
    pass_at_1: float = Field(alias="pass@1")
    cons_at_k: float | None = Field(None, alias="cons@k")
    k: int | None = None
    mean_tokens: float | None = None
    samples: int = 0


class RecipeStatus(Spec):
    phase: RecipePhase = "Pending"
    observed_generation: int | None = None
    current_stage: str | None = Field(None, description="The Stage printer column.")
    progress: str | None = Field(None, description="The Progress printer column, e.g. 41%.")
    conditions: list[Condition] = Field(default_factory=list)
    stages: dict[str, StageStatus] = Field(default_factory=dict)
    cost: CostTotals = Field(default_factory=CostTotals)
    forecast: ForecastStatus | None = None
    results: dict[str, dict[str, BenchmarkResult]] = Field(
        default_factory=dict, description="results.<model>.<benchmark> from eval stages."
    )
    report: str | None = Field(None, description="Store URI of the evaluation report (HTML).")
    retried: str | None = Field(None, description="The last fathom.dev/retry annotation value the operator acted on "
                                "(or refused); a value is acted on once.")
