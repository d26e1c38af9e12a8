"""The control logic, pure: (spec, observed Jobs and Pods, current status, store facts, now) -> a Plan.

A Plan is the Jobs to create, the Jobs to suspend, resume or delete, the events to post, the store
reads still needed, and the complete new status. `handlers`/`reconcile` only observe, call `plan()`
and apply what it returns, so everything here is tested without Kubernetes.

Rules, per stage in DAG order (the status is rebuilt from scratch every time):

- Observed Jobs are attempts (`<recipe>-<stage>-<attempt>`, annotated with the stage fingerprint).
  A finished attempt is recorded once in `history` with its cost, so costs and retry counts survive
  deleted Jobs and operator restarts; the running attempt is costed live.
- A stage starts (attempt 0) when all its inputs are Succeeded or Cached, nothing failed for good
  (fail fast: running stages finish, no new ones start), the recipe is not suspended and the budget
  is not spent. With `spec.cache`, a store output whose fingerprint matches makes it Cached instead.
- A failed attempt is retried after 30 s x 2^(failures-1) (capped) until `retries` is used up; a
  preempted or evicted one is retried at once and does not count. Training retries resume from the
  newest complete checkpoint that this run of the stage wrote.
- `spec.suspend`, or a spent budget under `budgetPolicy: stop-all`, suspends running Jobs.
- A stage whose fingerprint changed (see `fingerprints`) starts over; its running Job is deleted.
- Only Jobs controlled by this recipe object (owner UID) are its attempts: a recipe deleted and
  created again never adopts the old one's Jobs or their cost. A name the API server reports as
  taken by an object this recipe does not own (`Inputs.conflicts`) fails the stage, with the reason.
- A status that cannot be read (a list where a mapping belongs, unknown shapes) counts as missing,
  part by part; `Plan.warnings` says what was dropped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from fathom_jobs import registry

from . import dag
from .actions import Event, Plan, dump_status
from .api.recipe import API_VERSION, KIND, FathomRecipe
from .api.status import AttemptOutcome, AttemptRecord, ForecastStatus, RecipeStatus, StageProgress, StageStatus
from .conditions import DONE
from .cost import ZERO, Price, Usage, attempt_usage, format_usd, rounded
from .estimate import forecast_fingerprint, forecast_status, measured_from_status
from .fingerprints import stage_fingerprints
from .forecast import forecast
from .hardware import Calibration, CalibrationError, parse_calibration
from .observe import ANNOTATION_FINGERPRINT, Attempt, JobObs, PodObs, attempts, format_time, parse_time
from .render import (
    literal_env,
    produces_results,
    render_stage,
    resolved_params,
    service_name,
    stage_by_name,
    stage_gpus,
    stage_image,
    stage_output_uri,
    stage_pods,
)
from .rollup import Budget, RollupInput, invalid, rollup
from .store_reader import Fact, Read, stage_progress
from .validate import FieldError, RecipeInvalid, validate_document

__all__ = ["Event", "Inputs", "Options", "Parsed", "Plan", "Read", "dump_status", "load_status", "parse", "plan"]

OUTCOME: dict[str, AttemptOutcome] = {"succeeded": "Succeeded", "failed": "Failed", "preempted": "Preempted"}
METRICS_LIMIT = 64 * 1024  # a stage's metrics.json copied into status.stages.<name>.metrics, serialized


def _json_size(value: Any) -> int:
    try:
        return len(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError, RecursionError):
        return 2**62  # not plain JSON: never copied


@dataclass(frozen=True)
class Options:
    backoff_seconds: float = 30.0
    backoff_cap_seconds: float = 900.0
    progress_seconds: float = 30.0  # progress.json is read at most this often per running stage
    retry_read_seconds: float = 120.0  # a failed metrics read is retried this much later


@dataclass(frozen=True)
class Parsed:
    recipe: FathomRecipe
    deps: dict[str, list[str]]
    order: list[str]
    fingerprints: dict[str, str]
    weights: dict[str, int]
    calibration: Calibration | None = None  # the operator's GPU calibration (Helm defaults.calibration)


@dataclass(frozen=True)
class Inputs:
    name: str
    namespace: str
    uid: str | None
    generation: int | None
    parsed: Parsed | list[FieldError]
    status: dict[str, Any] | None
    jobs: list[JobObs]
    pods: list[PodObs]
    facts: dict[tuple[str, str], Fact]
    now: datetime
    options: Options = Options()
    conflicts: Mapping[str, str] = field(default_factory=dict)  # object name -> why it is not ours


def parse(name: str, namespace: str, spec: Any, defaults: dict[str, Any] | None = None) -> Parsed | list[FieldError]:
    """Validate like `fathom validate` does (field paths included; the operator's defaults under the
    spec), then precompute what plan() needs. Never raises: anything unexpected is an error on `spec`."""
    if not isinstance(spec, dict):
        return [FieldError("spec", "expected a mapping")]
    try:
        return _parse(name, namespace, spec, defaults)
    except RecipeInvalid as exc:
        return exc.errors
    except Exception as exc:  # a bug must make the recipe Invalid with a reason, never crash the operator
        return [FieldError("spec", f"could not be checked ({type(exc).__name__}: {str(exc)[:300]}); "
                                   "please report this as a bug")]


def _parse(name: str, namespace: str, spec: dict[str, Any], defaults: dict[str, Any] | None) -> Parsed:
    document = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name, "namespace": namespace},
                "spec": spec}
    recipe = validate_document(document, defaults)
    deps = dag.dependencies(recipe.spec)
    order = [n for level in dag.levels(deps) for n in level]
    weights = {s.name: stage_pods(s) * max(1, stage_gpus(recipe.spec, s)) for s in recipe.spec.stages}
    calibration = None
    if defaults and defaults.get("calibration"):
        try:
            calibration = parse_calibration(defaults["calibration"], "defaults.calibration")
        except CalibrationError:
            pass  # the admin's file is checked where it is loaded (`fathom operator`); the forecast uses the cited constants
    return Parsed(recipe, deps, order, stage_fingerprints(recipe, namespace, deps), weights, calibration)


def load_status(raw: Any) -> RecipeStatus:
    """The recipe's current status; unreadable parts are dropped rather than failing the recipe."""
    return read_status(raw)[0]


def read_status(raw: Any) -> tuple[RecipeStatus, list[str]]:
    """(the readable part of a status, what was dropped). Garbage counts as missing, part by part:
    a stage whose own fields are unreadable keeps its readable finished attempts (they were paid for)."""
    if raw is None or raw == {}:
        return RecipeStatus(), []
    if not isinstance(raw, Mapping):
        return RecipeStatus(), [f"status is {type(raw).__name__}, not a mapping: treated as missing"]
    problems: list[str] = []
    known = {f.alias or n for n, f in RecipeStatus.model_fields.items()}
    fields: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known or key == "stages":
            continue
        try:
            RecipeStatus.model_validate({key: value})
        except (ValueError, TypeError, RecursionError):
            problems.append(f"status.{key} is unreadable: treated as missing")
            continue
        fields[key] = value
    stages: dict[str, StageStatus] = {}
    found = raw.get("stages")
    if found is not None and not isinstance(found, Mapping):
        problems.append(f"status.stages is {type(found).__name__}, not a mapping: treated as missing")
    for name, value in (found.items() if isinstance(found, Mapping) else ()):
        if not isinstance(name, str):
            continue
        try:
            stages[name] = StageStatus.model_validate(value)
            continue
        except (ValueError, TypeError, RecursionError):
            problems.append(f"status.stages.{name[:80]} is unreadable: treated as missing")
        history = value.get("history") if isinstance(value, Mapping) else None
        kept = []
        for record in history if isinstance(history, list) else ():
            try:
                kept.append(AttemptRecord.model_validate(record))
            except (ValueError, TypeError, RecursionError):
                continue
        if kept:
            stages[name] = StageStatus(history=kept)
    try:
        status = RecipeStatus.model_validate(fields)
    except (ValueError, TypeError, RecursionError):
        problems.append("status is unreadable: treated as missing")
        status = RecipeStatus()
    return status.model_copy(update={"stages": stages}), problems


def backoff(options: Options, failures: int) -> float:
    return min(options.backoff_cap_seconds, options.backoff_seconds * 2.0 ** max(0, failures - 1))


def _record(a: Attempt, outcome: AttemptOutcome, price: Price, now: datetime) -> AttemptRecord:
    used = attempt_usage(a, price, now)
    return AttemptRecord(attempt=a.attempt, job=a.job.name, outcome=outcome,
                         fingerprint=a.job.fingerprint, start_time=format_time(a.start),
                         completion_time=format_time(a.end or now), gpu_hours=rounded(used.gpu_hours, 4),
                         cost_usd=rounded(used.usd, 4), message=a.message)


class _Planner:
    """Accounts every attempt on construction (so the budget is known), then decides each stage in run()."""

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
        self.stages: dict[str, StageStatus] = {}
        self.created: set[str] = set()
        gone = sorted({*self.observed, *self.old.stages} - set(self.p.order))
        for name in [*self.p.order, *gone]:
            self.account(name)
        self.budget = Budget(rounded(sum(self.stage_cost(n)[1] for n in self.history)), self.spec.budget_usd)
        self.forecast = self.make_forecast(self.old.stages, self.old.forecast)  # what `budgetPolicy: forecast` uses
        self.held_by_forecast: list[str] = []
        self.failed_for_good = [n for n in self.p.order if self.live[n] is None and self._failed_for_good(n)]

    # -- accounting: what finished, what runs, what it cost ----------------------------------

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
        if a.job.parallelism > 1 and name in self.p.fingerprints and stage_by_name(self.spec, name).nodes > 1:
            self.out.delete.append(("Service", service_name(a.job.name)))

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
            elif fp is None or a.job.fingerprint != fp:
                self.supersede(name, a, history)
            else:
                live.append(a)
        for extra in live[:-1]:  # never two attempts of one stage at once
            self.supersede(name, extra, history)
        if prev is not None and (vanished := self.vanished(name, prev, history)) is not None:
            history.append(vanished)
            self.new_records.append((name, vanished))
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

    # -- decisions ----------------------------------------------------------------------------

    def fact(self, kind: str, name: str, key: str) -> Fact | None:
        found = self.inp.facts.get((kind, name))
        return found if found is not None and found.key == key else None

    def ask(self, kind: str, name: str, key: str, **args: Any) -> None:
        storage = self.spec.store.model_dump(by_alias=True, exclude_none=True)
        self.out.reads.append(Read(kind, name, key, {**args, "storage": storage}))

    def next_attempt(self, name: str) -> int:
        numbers = [r.attempt for r in self.history[name]] + [a.attempt for a in self.observed.get(name, [])]
        return max(numbers) + 1 if numbers else 0

    def wait_until(self, when: datetime) -> None:
        seconds = max(0.0, (when - self.now).total_seconds())
        self.out.requeue_after = seconds if self.out.requeue_after is None else min(self.out.requeue_after, seconds)

    def hold(self) -> str | None:
        """Why nothing may start now, or None."""
        if self.spec.suspend:
            return "held: the recipe is suspended (spec.suspend)"
        if self.budget.exceeded:
            return f"held: the budget is spent ({self.budget.text})"
        return None

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

    def over_forecast(self, name: str) -> str | None:
        """Under `budgetPolicy: forecast`, why this stage may not start (its forecast would pass the budget)."""
        limit = self.spec.budget_usd
        row = self.forecast.stages.get(name)
        if self.spec.budget_policy != "forecast" or limit is None or row is None:
            return None
        if self.budget.spent + row.usd <= limit:
            return None
        self.held_by_forecast.append(name)
        return (f"held: spent {format_usd(self.budget.spent)} + this stage's forecast {format_usd(row.usd)} "
                f"= {format_usd(self.budget.spent + row.usd)} would pass the budget {format_usd(limit)}")

    def start(self, name: str, st: StageStatus, retry: bool) -> None:
        stage = stage_by_name(self.spec, name)
        fp = self.p.fingerprints[name]
        output = stage_output_uri(self.spec, self.inp.namespace, self.inp.name, name)
        if reason := self.hold():
            st.phase, st.message = ("Waiting" if retry else "Pending"), reason
            return
        if not retry and self.spec.cache:
            memo = self.fact("memo", name, fp)
            if memo is None:
                params = resolved_params(self.spec, self.inp.namespace, self.inp.name, stage)
                self.ask("memo", name, fp, stage_type=stage.type, params=params,
                         image=stage_image(self.spec, stage), output=output)
                st.phase, st.message = "Pending", "checking the store for this output"
                return
            if memo.value and memo.value.get("hit"):
                st.phase, st.output, st.message = "Cached", output, "the store already holds this output"
                self.finished(name, st, self.old.stages.get(name))  # its metrics (and eval results) too
                return
        if reason := self.over_forecast(name):
            st.phase, st.message = ("Waiting" if retry else "Pending"), reason
            return
        attempt = self.next_attempt(name)
        resume = None
        if retry and registry.stage_type(stage.type).trains:
            key = f"{fp}:{attempt}"
            found = self.fact("checkpoint", name, key)
            if found is None:
                first = [t for r in self.history[name] if r.fingerprint == fp for t in (r.start_time, r.completion_time) if t]
                self.ask("checkpoint", name, key, output=output, not_before=min(first) if first else None)
                st.phase, st.message = "Waiting", "looking for the newest checkpoint to resume from"
                return
            resume = found.value
        objects = self.render(name, attempt, resume, fp)
        taken = next((self.inp.conflicts[o["metadata"]["name"]] for o in objects
                      if o["metadata"]["name"] in self.inp.conflicts), None)
        if taken is not None:  # a 409 for an object this recipe does not own: an error, never success
            st.phase, st.message = "Failed", taken
            return
        self.out.create.append(objects)
        self.created.add(name)
        job = objects[-1]["metadata"]["name"]
        st.phase, st.job, st.attempts = "Waiting", job, st.attempts + 1
        st.message = "waiting for its pods to start"
        st.next_retry_time = None
        resumed = f", resuming from {resume}" if resume else ""
        self.out.events.append(Event("Normal", "JobCreated", f"{name}: attempt {attempt}, Job {job}{resumed}"))

    def render(self, name: str, attempt: int, resume: str | None, fp: str) -> list[dict[str, Any]]:
        owner = {"apiVersion": API_VERSION, "kind": KIND, "name": self.inp.name, "uid": self.inp.uid,
                 "controller": True, "blockOwnerDeletion": True}
        objects = render_stage(self.p.recipe, name, attempt, namespace=self.inp.namespace,
                               resume_from=resume, owner=owner if self.inp.uid else None)
        for obj in objects:
            obj["metadata"].setdefault("annotations", {})[ANNOTATION_FINGERPRINT] = fp
        if produces_results(stage_by_name(self.spec, name)):
            # The report's cost section: what every other stage has cost so far.
            costs = {stage: {"gpuHours": round(sum(r.gpu_hours for r in records), 4),
                             "costUSD": round(sum(r.cost_usd for r in records), 4)}
                     for stage, records in self.history.items() if stage != name}
            container = objects[0]["spec"]["template"]["spec"]["containers"][0]
            container["env"].append({"name": "FATHOM_STAGE_COSTS", "value": literal_env(json.dumps(costs, sort_keys=True))})
        return objects[1:] + objects[:1]  # the headless Service first: a killed operator never leaves a Job without it

    def follow(self, name: str, st: StageStatus, a: Attempt) -> None:
        """A running attempt: keep it suspended or running as the spec and budget want."""
        st.job = a.job.name
        want = self.spec.suspend or (self.budget.exceeded and self.spec.budget_policy == "stop-all")
        why = "spec.suspend" if self.spec.suspend else f"budget spent ({self.budget.text})"
        if want and not a.job.suspended:
            self.out.suspend.append((a.job.name, True))
            st.phase, st.message = "Suspended", f"suspended: {why}"
        elif not want and a.job.suspended and not a.job.kueue:
            self.out.suspend.append((a.job.name, False))
            st.phase, st.message = "Waiting", "resumed; waiting for its pods"
        elif a.state == "suspended":
            queued = a.job.kueue and not want
            st.phase = "Waiting" if queued else "Suspended"
            st.message = f"queued in Kueue ({self.spec.queue_name})" if queued else f"suspended: {why}"
        elif a.state == "running":
            st.phase = "Running"
        else:
            stuck = next((p.waiting for p in a.pods if p.waiting), None)
            st.phase = "Waiting"
            st.message = f"waiting for its pods to start ({stuck})" if stuck else "waiting for its pods to start"
        if st.phase == "Running":
            self.track_progress(name, st, a)

    def track_progress(self, name: str, st: StageStatus, a: Attempt) -> None:
        key = str(a.attempt)
        found = self.fact("progress", name, key)
        if found is None or (self.now - found.at).total_seconds() >= self.inp.options.progress_seconds:
            output = stage_output_uri(self.spec, self.inp.namespace, self.inp.name, name)
            self.ask("progress", name, key, output=output)
        prev = self.old.stages.get(name)
        if found is not None and found.error is None:
            reading = stage_progress(found.value, a.start, found.at)
            try:
                st.progress = StageProgress.model_validate(reading) if reading else None
            except ValueError:
                st.progress, st.message = None, "progress.json is unreadable"
        elif prev is not None and prev.job == a.job.name:
            st.progress = prev.progress  # keep the last good reading through a store hiccup
        if found is not None and found.error is not None:
            st.message = f"progress unavailable: {found.error}"

    def finished(self, name: str, st: StageStatus, prev: StageStatus | None) -> None:
        """Succeeded or Cached: pick up metrics.json (and eval results) once."""
        fp = self.p.fingerprints[name]
        if prev is not None and prev.fingerprint == fp and prev.metrics is not None:
            st.metrics = prev.metrics
            return
        found = self.fact("metrics", name, fp)
        retry_due = found is not None and found.error is not None and \
            (self.now - found.at).total_seconds() >= self.inp.options.retry_read_seconds
        if found is not None and found.error is not None:
            st.message = f"metrics unavailable: {found.error}"
        if found is None or retry_due:
            results = produces_results(stage_by_name(self.spec, name))
            self.ask("metrics", name, fp, output=st.output, results=results)
        elif found.value:
            metrics = found.value.get("metrics")
            size = _json_size(metrics)
            if isinstance(metrics, dict) and size > METRICS_LIMIT:  # the status is one etcd object
                st.message = f"metrics.json is {size:,} bytes: over {METRICS_LIMIT:,} it is not copied into the status"
            st.metrics = metrics if isinstance(metrics, dict) and size <= METRICS_LIMIT else None

    def decide(self, name: str) -> StageStatus:
        fp = self.p.fingerprints[name]
        prev = self.old.stages.get(name)
        history = self.history[name]
        mine = [r for r in history if r.fingerprint == fp]
        live = self.live[name]
        gpu, usd, wasted = self.stage_cost(name)
        starts = [t for t in [*(r.start_time for r in mine), format_time(live.start) if live else None] if t]
        st = StageStatus(fingerprint=fp, history=history, gpu_hours=gpu, cost_usd=usd, wasted_gpu_hours=wasted,
                         attempts=len(mine) + (1 if live else 0),
                         failures=sum(r.outcome == "Failed" for r in mine),
                         preemptions=sum(r.outcome == "Preempted" for r in mine),
                         start_time=min(starts) if starts else None,
                         job=live.job.name if live else (mine[-1].job if mine else None))
        output = stage_output_uri(self.spec, self.inp.namespace, self.inp.name, name)
        success = next((r for r in mine if r.outcome == "Succeeded"), None)
        if prev is not None and prev.phase == "Cached" and prev.fingerprint == fp and not mine and live is None:
            st.phase, st.output, st.message = "Cached", output, prev.message
            self.finished(name, st, prev)
        elif success is not None:
            st.phase, st.output, st.job, st.completion_time = "Succeeded", output, success.job, success.completion_time
            self.finished(name, st, prev)
        elif live is not None:
            self.follow(name, st, live)
        elif mine:
            self.after_failure(name, st, mine[-1])
        else:
            self.not_started(name, st)
        return st

    def after_failure(self, name: str, st: StageStatus, last: AttemptRecord) -> None:
        """The last attempt failed or was preempted: retry (after a backoff), or fail for good."""
        retries = stage_by_name(self.spec, name).retries
        if last.outcome == "Failed" and st.failures > retries:
            st.phase = "Failed"
            st.message = f"failed after {st.attempts} attempt{'s' if st.attempts > 1 else ''}: {last.message}"
            return
        ended = parse_time(last.completion_time) or self.now
        wait = backoff(self.inp.options, st.failures) if last.outcome == "Failed" else 0.0
        due = ended + timedelta(seconds=wait)
        if due <= self.now:
            self.start(name, st, retry=True)
            return
        st.phase, st.next_retry_time = "Waiting", format_time(due)
        st.message = (f"attempt {last.attempt} failed ({last.message}); "
                      f"retry {st.failures} of {retries} at {st.next_retry_time}")
        self.wait_until(due)

    def not_started(self, name: str, st: StageStatus) -> None:
        waiting = [d for d in self.p.deps[name] if self.stages[d].phase not in DONE]
        broken = [d for d in waiting if self.stages[d].phase in ("Failed", "Skipped")]
        if broken:
            st.phase, st.message = "Skipped", f"not started: input {broken[0]} {self.stages[broken[0]].phase.lower()}"
        elif waiting:
            st.phase, st.message = "Pending", f"waiting for {', '.join(waiting)}"
        elif self.failed_for_good:
            st.phase, st.message = "Skipped", f"not started: stage {self.failed_for_good[0]} failed"
        else:
            self.start(name, st, retry=False)

    def run(self) -> Plan:
        for name in self.p.order:
            self.stages[name] = self.decide(name)
        for name in self.history:
            if name not in self.stages and self.history[name]:  # removed from the spec: keep what it cost
                gpu, usd, wasted = self.stage_cost(name)
                old = self.old.stages[name] if name in self.old.stages else StageStatus()
                self.stages[name] = old.model_copy(update={
                    "history": self.history[name], "gpu_hours": gpu, "cost_usd": usd, "wasted_gpu_hours": wasted,
                    "phase": "Skipped" if old.phase not in DONE else old.phase,
                    "message": "removed from the recipe", "job": None, "progress": None})
        # Moving: a Job that is not suspended, or one created right now (a retry in backoff is not).
        moving = frozenset(n for n in self.p.order if n in self.created
                           or (self.live[n] is not None and self.stages[n].phase in ("Running", "Waiting")))
        return rollup(RollupInput(
            spec=self.spec, order=tuple(self.p.order), deps=self.p.deps, fingerprints=self.p.fingerprints,
            weights=self.p.weights, generation=self.inp.generation, now=self.now, facts=self.inp.facts,
            old=self.old, stages=self.stages, moving=moving, new_records=tuple(self.new_records),
            budget=self.budget, forecast=self.make_forecast(self.stages, self.forecast, self.old.forecast),
            held_by_forecast=tuple(self.held_by_forecast)), self.out)

    def _failed_for_good(self, name: str) -> bool:
        fp = self.p.fingerprints[name]
        mine = [r for r in self.history[name] if r.fingerprint == fp]
        failures = sum(r.outcome == "Failed" for r in mine)
        return bool(mine) and mine[-1].outcome == "Failed" and failures > stage_by_name(self.spec, name).retries \
            and not any(r.outcome == "Succeeded" for r in mine)


def plan(inp: Inputs) -> Plan:
    old, problems = read_status(inp.status)
    if not isinstance(inp.parsed, Parsed):
        result = invalid(inp.now, inp.generation, old, inp.parsed)
    else:
        result = _Planner(inp, inp.parsed, old).run()
    result.warnings[:0] = problems
    return result
