"""The books of one recipe's attempts: what finished (recorded once in `history`, with its cost),
what runs (costed live), what was superseded or vanished, the budget spent and the forecast.

Separate from `plan` so the per-stage decisions read apart from the bookkeeping they rest on; the
planner (`plan._Planner`) is a `Ledger` that then decides each stage.
"""

from __future__ import annotations

from datetime import datetime

from fathom_jobs import registry

from . import retry
from .actions import Plan
from .api.status import AttemptOutcome, AttemptRecord, ForecastStatus, RecipeStatus, StageStatus
from .cost import ZERO, Price, Usage, attempt_usage, rounded
from .estimate import forecast_fingerprint, forecast_status, measured_from_status
from .forecast import forecast
from .observe import Attempt, attempts, format_time
from .plan_inputs import Inputs, Parsed
from .render import service_name, stage_by_name
from .rollup import Budget

OUTCOME: dict[str, AttemptOutcome] = {"succeeded": "Succeeded", "failed": "Failed", "preempted": "Preempted"}


def _record(a: Attempt, outcome: AttemptOutcome, price: Price, now: datetime) -> AttemptRecord:
    used = attempt_usage(a, price, now)
    return AttemptRecord(attempt=a.attempt, job=a.job.name, outcome=outcome,
                         fingerprint=a.job.fingerprint, start_time=format_time(a.start),
                         completion_time=format_time(a.end or now), gpu_hours=rounded(used.gpu_hours, 4),
                         cost_usd=rounded(used.usd, 4), message=a.message)


class Ledger:
    """Accounts every attempt on construction, so the budget (and the forecast) are known before
    any stage is decided."""

    def __init__(self, inp: Inputs, parsed: Parsed, old: RecipeStatus) -> None:
        self.inp, self.old, self.p = inp, old, parsed
        self.spec = parsed.recipe.spec
        self.now = inp.now
        self.out = Plan(status={})
        jobs = inp.jobs
        if inp.uid is not None:  # a recipe's attempts are the Jobs it controls, not every Job with its label
            jobs = [j for j in inp.jobs if j.owner_uid == inp.uid]
            if len(jobs) < len(inp.jobs):
                foreign = sorted(j.name for j in inp.jobs if j.owner_uid != inp.uid)
                self.out.warnings.append(f"ignoring Jobs labelled for this recipe but not owned by it "
                                         f"(uid {inp.uid}): {', '.join(foreign[:5])}")
        self.observed = attempts(jobs, inp.pods)
        self.history: dict[str, list[AttemptRecord]] = {}
        self.new_records: list[tuple[str, AttemptRecord]] = []
        self.live: dict[str, Attempt | None] = {}
        self.usage: dict[str, Usage] = {}
        gone = sorted({*self.observed, *self.old.stages} - set(self.p.order))
        for name in [*self.p.order, *gone]:
            self.account(name)
        self.budget = Budget(rounded(sum(self.stage_cost(n)[1] for n in self.history)), self.spec.budget_usd)
        self.forecast = self.make_forecast(self.old.stages, self.old.forecast)  # what `budgetPolicy: forecast` uses
        self.retry_from = {n: s.retry_from for n, s in old.stages.items() if s.retry_from is not None}

    def price(self, stage: str) -> Price:
        if stage not in self.p.fingerprints:
            return Price()
        pool = self.spec.node_pools[stage_by_name(self.spec, stage).pool]
        return Price(pool.gpu_resource, pool.gpu_hour_usd, pool.cpu_hour_usd)

    def supersede(self, name: str, a: Attempt, history: list[AttemptRecord]) -> None:
        record = _record(a, "Superseded", self.price(name), self.now)
        history.append(record)
        self.new_records.append((name, record))
        self.out.delete.append(("Job", a.job.name))
        self.release(name, a.job.name, a.job.parallelism)

    def release(self, name: str, job: str, pods: int | None) -> None:
        """An attempt ended: its headless Service (multi-node training only) goes with it. Only training
        stages span nodes (sharded sampling is parallel too, without one); `pods` None: the Job is gone,
        the spec says. A stage gone from the spec: parallel is enough (deleting a missing one is a 404)."""
        stage = next((s for s in self.spec.stages if s.name == name), None)
        if stage is None:
            multi = pods is None or pods > 1
        elif pods is None:
            multi = stage.nodes > 1
        else:
            multi = pods > 1 and registry.stage_type(stage.type).trains
        if multi:
            self.out.delete.append(("Service", service_name(job)))

    def account(self, name: str) -> None:
        fp = self.p.fingerprints.get(name)
        prev = self.old.stages.get(name)
        history = list(prev.history) if prev else []
        known = {r.attempt for r in history}
        live = []
        for a in self.observed.get(name, []):
            if a.attempt in known:
                continue
            if a.terminal:
                record = _record(a, OUTCOME[a.state], self.price(name), self.now)
                history.append(record)
                self.new_records.append((name, record))
                self.release(name, a.job.name, a.job.parallelism)
            elif fp is None or a.job.fingerprint != fp:
                self.supersede(name, a, history)
            else:
                live.append(a)
        for extra in live[:-1]:  # never two attempts of one stage at once
            self.supersede(name, extra, history)
        if prev is not None and (vanished := self.vanished(name, prev, history)) is not None:
            history.append(vanished)
            self.new_records.append((name, vanished))
            self.release(name, vanished.job, None)
        self.history[name] = sorted(history, key=lambda r: r.attempt)
        self.live[name] = live[-1] if live else None
        self.usage[name] = attempt_usage(live[-1], self.price(name), self.now) if live else ZERO

    def vanished(self, name: str, prev: StageStatus, history: list[AttemptRecord]) -> AttemptRecord | None:
        """A running attempt whose Job was deleted behind the operator's back (a user, a TTL).

        Its cost until the last status stays counted (the status had it), and it is retried like a
        preemption. Only for attempts the status saw running: a Job the operator just created may
        not have reached its watch yet, and must not be mistaken for a lost one.
        """
        if prev.phase not in ("Running", "Suspended") or not prev.job:
            return None
        observed = {a.job.name for a in self.observed.get(name, [])}
        if prev.job in observed or any(r.job == prev.job for r in history):
            return None
        number = prev.job.rsplit("-", 1)[-1]
        if not number.isdigit():
            return None
        gpu = prev.gpu_hours - sum(r.gpu_hours for r in history)
        usd = prev.cost_usd - sum(r.cost_usd for r in history)
        return AttemptRecord(attempt=int(number), job=prev.job, outcome="Preempted", fingerprint=prev.fingerprint,
                             start_time=prev.start_time, completion_time=format_time(self.now),
                             gpu_hours=rounded(max(0.0, gpu), 4), cost_usd=rounded(max(0.0, usd), 4),
                             message=f"Job {prev.job} disappeared (deleted outside the operator)")

    def stage_cost(self, name: str) -> tuple[float, float, float]:
        history = self.history[name]
        gpu = sum(r.gpu_hours for r in history) + self.usage[name].gpu_hours
        usd = sum(r.cost_usd for r in history) + self.usage[name].usd
        wasted = sum(r.gpu_hours for r in history if r.outcome in ("Failed", "Preempted"))
        return rounded(gpu), rounded(usd), rounded(wasted)

    def next_attempt(self, name: str) -> int:
        numbers = [r.attempt for r in self.history[name]] + [a.attempt for a in self.observed.get(name, [])]
        return max(numbers) + 1 if numbers else 0

    def make_forecast(self, stages: dict[str, StageStatus], *known: ForecastStatus | None) -> ForecastStatus:
        """The recipe's forecast given these stage states; one of `known` while the spec and the
        finished stages (and their metrics) are the same."""
        fingerprint = forecast_fingerprint(self.p.fingerprints, stages)
        for candidate in known:
            if candidate is not None and candidate.fingerprint == fingerprint:
                return candidate
        try:
            found = forecast(self.p.recipe, self.p.calibration, measured=measured_from_status(stages))
        except (ValueError, ArithmeticError, TypeError):  # a job's metrics.json the forecast cannot use
            found = forecast(self.p.recipe, self.p.calibration)
        return forecast_status(found, stages, fingerprint)

    def _failed_for_good(self, name: str) -> bool:
        fp = self.p.fingerprints[name]
        mine = [r for r in self.history[name] if r.fingerprint == fp]
        failures = sum(r.outcome == "Failed" and retry.counted(r.attempt, self.retry_from, name) for r in mine)
        return bool(mine) and mine[-1].outcome == "Failed" and failures > stage_by_name(self.spec, name).retries \
            and not any(r.outcome == "Succeeded" for r in mine)
