"""The recipe-level half of a plan (pure): totals, phase, conditions, printer columns and events.

Recipe phase: Succeeded when every stage is Succeeded or Cached; Failed when a stage failed for good,
or when the budget is spent and nothing runs any more (raising `budgetUSD` continues the recipe);
Suspended when `spec.suspend` is set; Running once anything started; Pending before that.
Events are posted for every stage transition, every finished attempt (failed, preempted,
superseded) and every recipe-level change, so `kubectl describe` reads as the recipe's timeline.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fathom_jobs.redact import redact, redact_deep

from .actions import Event, Plan, dump_status
from .api.recipe import RecipeSpec
from .api.status import (
    CONDITION_TYPES,
    AttemptRecord,
    ConditionType,
    CostTotals,
    ForecastStatus,
    RecipePhase,
    RecipeStatus,
    StageStatus,
)
from .conditions import DONE, current_stage, progress_percent, set_condition, stage_list
from .cost import format_usd, rounded
from .field_errors import FieldError
from .fingerprints import changed_stages
from .observe import format_time
from .render import produces_results, stage_by_name
from .results import eval_status, merge_results
from .store_reader import Fact

EVENT_LIMIT = 1000  # Event messages are capped at 1 KiB by the API server
RESULTS_LIMIT = 256 * 1024  # an eval stage's results larger than this stay in the store, not the status
MAX_ERRORS_SHOWN = 20  # an Invalid condition lists this many field errors
CONDITION_MESSAGE_LIMIT = 32768  # the API server's limit on a condition message


@dataclass(frozen=True)
class Budget:
    spent: float  # USD, running attempts included
    limit: float | None  # spec.budgetUSD

    @property
    def exceeded(self) -> bool:
        return self.limit is not None and self.spent >= self.limit

    @property
    def text(self) -> str:
        return f"${self.spent:,.2f} of ${self.limit:,.2f}" if self.limit is not None else f"${self.spent:,.2f}"


@dataclass(frozen=True)
class RollupInput:
    """What the planner decided per stage, and the facts roll-up needs to sum it up."""

    spec: RecipeSpec
    order: tuple[str, ...]  # stages in DAG order
    deps: Mapping[str, list[str]]
    fingerprints: Mapping[str, str]
    weights: Mapping[str, int]  # progress weight per stage (pods x GPUs)
    generation: int | None
    now: datetime
    facts: Mapping[tuple[str, str], Fact]
    old: RecipeStatus
    stages: Mapping[str, StageStatus]  # the new per-stage status, removed stages included
    moving: frozenset[str]  # a Job created now, or a live attempt that is not suspended
    new_records: tuple[tuple[str, AttemptRecord], ...]  # attempts finished since the last status
    budget: Budget
    forecast: ForecastStatus | None = None
    held_by_forecast: tuple[str, ...] = ()  # stages `budgetPolicy: forecast` keeps from starting


def _event(plan: Plan, type_: str, reason: str, message: str) -> None:
    plan.events.append(Event(type_, reason, redact(message)[:EVENT_LIMIT]))


def _public(status: RecipeStatus) -> dict[str, Any]:
    """The status as written to the cluster: no credential-looking value anywhere in it."""
    document: dict[str, Any] = redact_deep(dump_status(status))
    return document


def _stage_events(r: RollupInput, plan: Plan) -> None:
    old, stages = r.old, r.stages
    for name, record in r.new_records:
        if record.outcome == "Failed" and name in stages and stages[name].phase != "Failed":
            retries = stage_by_name(r.spec, name).retries
            _event(plan, "Warning", "AttemptFailed", f"{name}: attempt {record.attempt} failed: {record.message}; "
                                                     f"retry {stages[name].failures} of {retries}")
        elif record.outcome == "Preempted":
            _event(plan, "Warning", "AttemptPreempted", f"{name}: attempt {record.attempt} lost: {record.message}; "
                                                        "restarting (preemptions do not use retries)")
        elif record.outcome == "Superseded":
            _event(plan, "Normal", "AttemptSuperseded", f"{name}: stopped Job {record.job} (the stage changed)")
    skipped = []
    for name, st in stages.items():
        before = old.stages[name].phase if name in old.stages else "Pending"
        if st.phase == before:
            continue
        if st.phase == "Running":
            _event(plan, "Normal", "StageRunning", f"{name}: attempt {st.attempts - 1} running (Job {st.job})")
        elif st.phase == "Succeeded":
            _event(plan, "Normal", "StageSucceeded",
                   f"{name} succeeded: {st.gpu_hours:,.2f} GPU-hours, {format_usd(st.cost_usd)}")
        elif st.phase == "Cached":
            _event(plan, "Normal", "StageCached", f"{name}: the store already holds this output; no Job needed")
        elif st.phase == "Failed":
            _event(plan, "Warning", "StageFailed", f"{name} {st.message}")
        elif st.phase == "Suspended":
            _event(plan, "Normal", "StageSuspended", f"{name}: {st.message}")
        elif st.phase == "Skipped":
            skipped.append(name)
    if skipped:  # one event, not one per stage of a failed recipe
        _event(plan, "Normal", "StagesSkipped", f"not started: {stage_list(skipped, 10)} ({stages[skipped[0]].message})")


def _phase(r: RollupInput, phases: Mapping[str, str]) -> tuple[RecipePhase, list[str], list[str], bool]:
    """(recipe phase, failed stages, moving stages, stopped by the budget)."""
    order = r.order
    failed = [n for n in order if phases[n] == "Failed"]
    moving = [n for n in order if n in r.moving]
    stopped = r.budget.exceeded or bool(r.held_by_forecast)
    budget_stop = stopped and not moving and not all(phases[n] in DONE for n in order)
    if all(phases[n] in DONE for n in order):
        return "Succeeded", failed, moving, budget_stop
    if failed or budget_stop:
        return "Failed", failed, moving, budget_stop
    if r.spec.suspend:
        return "Suspended", failed, moving, budget_stop
    started = any(phases[n] != "Pending" for n in order) or bool(moving)
    return ("Running" if started else "Pending"), failed, moving, budget_stop


def rollup(r: RollupInput, plan: Plan) -> Plan:
    """Fill in the plan's status and recipe-level events from the per-stage decisions."""
    old, spec = r.old, r.spec
    now = format_time(r.now) or ""
    stages = r.stages
    order = r.order
    phases = {n: stages[n].phase for n in order}
    phase, failed, moving, budget_stop = _phase(r, phases)
    gpu = rounded(sum(s.gpu_hours for s in stages.values()))
    usd = rounded(sum(s.cost_usd for s in stages.values()))
    wasted = rounded(sum(s.wasted_gpu_hours for s in stages.values()))
    wasted_usd = rounded(sum(rec.cost_usd for s in stages.values() for rec in s.history
                             if rec.outcome in ("Failed", "Preempted")))
    cached = sum(phases[n] == "Cached" for n in order)
    g = r.generation
    conds = list(old.conditions)
    ready_reason = {"Succeeded": "Succeeded", "Failed": "Failed", "Suspended": "Suspended"}.get(phase, "InProgress")
    conds = set_condition(conds, "Ready", phase == "Succeeded", ready_reason,
                          f"all {len(order)} stages done ({cached} cached)" if phase == "Succeeded"
                          else f"{sum(p in DONE for p in phases.values())} of {len(order)} stages done", now, g)
    retrying = [n for n in order if stages[n].next_retry_time]
    if phase in ("Running", "Pending"):
        reason, message = (("StagesRunning", f"running: {stage_list(moving)}") if moving else
                           ("RetryBackoff", f"retrying {stage_list(retrying)} after a failure") if retrying else
                           ("Starting", "starting the next stages"))
        conds = set_condition(conds, "Progressing", True, reason, message, now, g)
    else:
        reason = "BudgetExceeded" if budget_stop else phase
        conds = set_condition(conds, "Progressing", False, reason, f"recipe {phase.lower()}", now, g)
    if failed:
        conds = set_condition(conds, "Failed", True, "StageFailed", f"stage {failed[0]} {stages[failed[0]].message}", now, g)
    elif budget_stop and not r.budget.exceeded:
        conds = set_condition(conds, "Failed", True, "ForecastOverBudget", f"{r.held_by_forecast[0]} "
                              f"{stages[r.held_by_forecast[0]].message}; raise spec.budgetUSD to continue", now, g)
    elif budget_stop:
        conds = set_condition(conds, "Failed", True, "BudgetExceeded", f"budget spent ({r.budget.text}); "
                              "raise spec.budgetUSD to continue", now, g)
    else:
        conds = set_condition(conds, "Failed", False, "NoFailure", "no stage failed", now, g)
    if r.budget.exceeded:
        stop = "; running stages suspended" if spec.budget_policy == "stop-all" else "; running stages may finish"
        conds = set_condition(conds, "BudgetExceeded", True, "BudgetExceeded",
                              f"spent {r.budget.text} (running stages included): no new stages start{stop}", now, g)
    elif r.held_by_forecast:
        held = r.held_by_forecast[0]
        conds = set_condition(conds, "BudgetExceeded", True, "ForecastOverBudget",
                              f"{held} {stages[held].message} (budgetPolicy: forecast)", now, g)
    else:
        within = f"spent {r.budget.text}" if spec.budget_usd is not None else "no budget set"
        conds = set_condition(conds, "BudgetExceeded", False, "WithinBudget", within, now, g)
    suspended_jobs = sum(1 for n in order if phases[n] == "Suspended")
    conds = set_condition(conds, "Suspended", spec.suspend, "SuspendedBySpec" if spec.suspend else "NotSuspended",
                          f"spec.suspend is true: {suspended_jobs} running stage(s) suspended, nothing new starts"
                          if spec.suspend else "not suspended", now, g)
    conds = set_condition(conds, "Invalid", False, "Valid", "the recipe is valid", now, g)
    conds.sort(key=lambda c: CONDITION_TYPES.index(c.type))

    results: dict[str, dict[str, Any]] = {}
    report = None
    for n in order:
        if phases[n] in DONE and produces_results(stage_by_name(spec, n)):
            found = _eval_results(stages[n], r.facts.get(("metrics", n)))
            if found is not None:
                results, report = merge_results(results, found["results"]), found["report"]
    status = RecipeStatus(
        phase=phase,
        observed_generation=g,
        current_stage=current_stage(order, phases),
        progress=progress_percent(phases, {n: (s.progress.fraction if s.progress else None) for n, s in stages.items()},
                                  r.weights),
        conditions=conds,
        stages=dict(stages),
        cost=CostTotals(gpu_hours=gpu, usd=usd, wasted_gpu_hours=wasted, wasted_usd=wasted_usd,
                        display=format_usd(usd).replace(",", "")),
        forecast=r.forecast,
        results=results or old.results,
        report=report or old.report,
    )
    _stage_events(r, plan)
    _recipe_events(r, plan, status, gpu, usd)
    plan.status = _public(status)
    return plan


def _eval_results(st: StageStatus, fact: Any) -> dict[str, Any] | None:
    """status.results and report of a finished (or cached) eval stage, from its metrics.json or results.json."""
    documents = [st.metrics]
    if fact is not None and fact.key == st.fingerprint and fact.value:
        documents.append(fact.value.get("results"))
    for document in documents:
        if isinstance(document, dict) and len(json.dumps(document, default=str)) <= RESULTS_LIMIT:
            try:
                found = eval_status(document, st.output)
            except ValueError:
                continue
            if found["results"]:
                return found
    return None


def _recipe_events(r: RollupInput, plan: Plan, new: RecipeStatus, gpu: float, usd: float) -> None:
    old = r.old
    before = {c.type: c for c in old.conditions}
    after = {c.type: c for c in new.conditions}

    def flipped(kind: ConditionType, to: str = "True") -> bool:
        return after[kind].status == to and (kind not in before or before[kind].status != to)

    started = {n: s.fingerprint for n, s in old.stages.items() if s.attempts or s.phase in DONE}
    roots, downstream = changed_stages(started, dict(r.fingerprints), dict(r.deps))
    if roots:
        extra = f", and downstream {stage_list(sorted(downstream))}" if downstream else ""
        _event(plan, "Normal", "Replanned", f"spec changed: rerunning {stage_list(sorted(roots))}{extra}")
    if flipped("BudgetExceeded"):
        _event(plan, "Warning", "BudgetExceeded", after["BudgetExceeded"].message)
    if flipped("Suspended"):
        _event(plan, "Normal", "Suspended", after["Suspended"].message)
    elif flipped("Suspended", "False") and "Suspended" in before:
        _event(plan, "Normal", "Resumed", "spec.suspend is false: resuming")
    if flipped("Invalid", "False") and "Invalid" in before:
        _event(plan, "Normal", "Valid", "the recipe is valid again")
    if new.phase != old.phase or not old.conditions:
        if new.phase == "Succeeded":
            _event(plan, "Normal", "RecipeSucceeded", f"all stages done: {gpu:,.2f} GPU-hours, {format_usd(usd)}")
        elif new.phase == "Failed":
            _event(plan, "Warning", "RecipeFailed", after["Failed"].message)


def invalid(at: datetime, generation: int | None, old: RecipeStatus, errors: list[FieldError]) -> Plan:
    """An invalid recipe: say why (field paths), start nothing, leave running Jobs and costs alone."""
    now = format_time(at) or ""
    message = redact("; ".join(map(str, errors[:MAX_ERRORS_SHOWN])))
    if len(errors) > MAX_ERRORS_SHOWN:
        message += f"; and {len(errors) - MAX_ERRORS_SHOWN} more (fathom validate lists them all)"
    message = message[:CONDITION_MESSAGE_LIMIT]
    g = generation
    conds = set_condition(list(old.conditions), "Invalid", True, "InvalidSpec", message, now, g)
    conds = set_condition(conds, "Ready", False, "InvalidSpec", "the recipe is invalid", now, g)
    conds = set_condition(conds, "Progressing", False, "InvalidSpec", "nothing starts until the recipe is fixed", now, g)
    conds.sort(key=lambda c: CONDITION_TYPES.index(c.type))
    status = old.model_copy(update={"phase": "Failed", "observed_generation": g, "conditions": conds})
    plan = Plan(status=_public(status))
    before = next((c for c in old.conditions if c.type == "Invalid"), None)
    if before is None or before.status != "True" or before.message != message:
        _event(plan, "Warning", "Invalid", message)
    return plan
