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
  preempted or evicted one is retried at once and does not count. `fathom retry` (retry.py) gives a
  Failed stage a fresh budget: failed attempts numbered below its `retryFrom` stop counting. Training retries resume from the
  newest complete checkpoint that this run of the stage wrote.
- `spec.suspend`, or a spent budget under `budgetPolicy: stop-all`, suspends running Jobs; the
  Kueue Workloads of Kueue Jobs are deactivated with them and reactivated on resume.
- An attempt that ends (succeeded, failed, preempted, superseded, vanished) takes its headless
  Service with it; `Inputs.services` (listed once per worker, so after every operator restart) lets
  every other Service of the recipe that no running attempt uses go too.
- A stage whose fingerprint changed (see `fingerprints`) starts over; its running Job is deleted.
- Only Jobs controlled by this recipe object (owner UID) are its attempts: a recipe deleted and
  created again never adopts the old one's Jobs or their cost. A name the API server reports as
  taken by an object this recipe does not own (`Inputs.conflicts`) fails the stage, with the reason.
- A status that cannot be read (a list where a mapping belongs, unknown shapes) counts as missing,
  part by part; `Plan.warnings` says what was dropped.

The inputs (`Inputs`, `Options`, `parse`, `read_status`) live in `plan_inputs`, the accounting of
attempts (history, live cost, budget, forecast) in `ledger`; this module decides each stage.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from fathom_jobs import registry

from . import retry, truth
from .actions import Event, Plan, dump_status
from .api.recipe import API_VERSION, KIND
from .api.status import AttemptRecord, RecipeStatus, StageProgress, StageStatus
from .conditions import DONE
from .cost import format_usd
from .ledger import Ledger
from .observe import ANNOTATION_FINGERPRINT, Attempt, format_time, parse_time
from .plan_inputs import Inputs, Options, Parsed, load_status, parse, read_status
from .render import (
    literal_env,
    produces_results,
    render_stage,
    resolved_params,
    service_name,
    stage_by_name,
    stage_image,
    stage_output_uri,
    stage_queue,
)
from .rollup import RollupInput, invalid, rollup
from .store_reader import Fact, Read, stage_progress

__all__ = ["Event", "Inputs", "Options", "Parsed", "Plan", "Read", "dump_status", "load_status", "parse", "plan"]

METRICS_LIMIT = 64 * 1024  # a stage's metrics.json copied into status.stages.<name>.metrics, serialized


def _json_size(value: Any) -> int:
    try:
        return len(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError, RecursionError):
        return 2**62  # not plain JSON: never copied


def backoff(options: Options, failures: int) -> float:
    return min(options.backoff_cap_seconds, options.backoff_seconds * 2.0 ** max(0, failures - 1))


class _Planner(Ledger):
    """A `Ledger` of every attempt (so the budget is known), that then decides each stage in run()."""

    def __init__(self, inp: Inputs, parsed: Parsed, old: RecipeStatus) -> None:
        super().__init__(inp, parsed, old)
        self.stages: dict[str, StageStatus] = {}
        self.created: set[str] = set()
        self.held_by_forecast: list[str] = []
        self.retried = self.take_retry()
        self.failed_for_good = [n for n in self.p.order if self.live[n] is None and self._failed_for_good(n)]

    # -- decisions ----------------------------------------------------------------------------

    def fact(self, kind: str, name: str, key: str) -> Fact | None:
        found = self.inp.facts.get((kind, name))
        return found if found is not None and found.key == key else None

    def ask(self, kind: str, name: str, key: str, **args: Any) -> None:
        storage = self.spec.store.model_dump(by_alias=True, exclude_none=True)
        self.out.reads.append(Read(kind, name, key, {**args, "storage": storage}))

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

    def take_retry(self) -> str | None:
        """`fathom retry`'s annotation, acted on (or refused) once: the value for status.retried."""
        found = retry.decide(self.inp.retry, self.old.retried, self.p.order, self.p.deps,
                             phase=lambda n: self.old.stages[n].phase if n in self.old.stages else "Pending",
                             failed=lambda n: self.live[n] is None and self._failed_for_good(n),
                             running=lambda n: self.live[n] is not None, next_attempt=self.next_attempt)
        if found is None:
            return self.old.retried
        self.retry_from.update(found.reset)
        if found.event is not None:
            self.out.events.append(found.event)
        return found.token

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
            queue = stage_queue(self.spec, stage_by_name(self.spec, name))
            st.message = f"queued in Kueue ({queue})" if queued else f"suspended: {why}"
        elif a.state == "running":
            st.phase = "Running"
        else:
            stuck = next((p.waiting for p in a.pods if p.waiting), None)
            st.phase = "Waiting"
            st.message = f"waiting for its pods to start ({stuck})" if stuck else "waiting for its pods to start"
        if st.phase == "Running":
            self.track_progress(name, st, a)
        if a.job.kueue:
            self.hold_workload(name, a, want)

    def hold_workload(self, name: str, a: Attempt, want: bool) -> None:
        """Kueue re-admits (and unsuspends) a Job whose Workload is active, so suspending one means
        deactivating its Workload. Sent on the change only: until the status shows the stage Suspended
        (the status is written after the change is applied), or while Kueue runs the Job anyway (its
        Workload appeared after the last try); reactivated once when the suspension ends."""
        prev = self.old.stages.get(name)
        held = prev is not None and prev.phase == "Suspended" and prev.job == a.job.name
        if want and (not held or not a.job.suspended):
            self.out.workloads.append((a.job.name, False))
        elif not want and held:
            self.out.workloads.append((a.job.name, True))

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
                         failures=sum(r.outcome == "Failed" and retry.counted(r.attempt, self.retry_from, name)
                                      for r in mine), retry_from=self.retry_from.get(name),
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
        counts = last.outcome == "Failed" and retry.counted(last.attempt, self.retry_from, name)
        wait = backoff(self.inp.options, st.failures) if counts else 0.0  # `fathom retry`: at once
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
        self.sweep_services()
        # Moving: a Job that is not suspended, or one created right now (a retry in backoff is not).
        moving = frozenset(n for n in self.p.order if n in self.created
                           or (self.live[n] is not None and self.stages[n].phase in ("Running", "Waiting")))
        return rollup(RollupInput(
            spec=self.spec, order=tuple(self.p.order), deps=self.p.deps, fingerprints=self.p.fingerprints,
            weights=self.p.weights, generation=self.inp.generation, now=self.now, facts=self.inp.facts,
            old=self.old, stages=self.stages, moving=moving, new_records=tuple(self.new_records),
            budget=self.budget, forecast=self.make_forecast(self.stages, self.forecast, self.old.forecast),
            held_by_forecast=tuple(self.held_by_forecast)), self.out)

    def sweep_services(self) -> None:
        """Every listed Service of the recipe that no running or starting attempt uses goes: whatever
        ended its Job while no operator was watching, no rendezvous Service outlives it."""
        if self.inp.services is None:
            return
        keep = {service_name(a.job.name) for a in self.live.values() if a is not None}
        keep |= {o["metadata"]["name"] for objects in self.out.create for o in objects if o.get("kind") == "Service"}
        keep |= {n for kind, n in self.out.delete if kind == "Service"}
        self.out.delete += [("Service", n) for n in sorted(set(self.inp.services) - keep)]


def plan(inp: Inputs) -> Plan:
    old, problems = read_status(inp.status)
    if not isinstance(inp.parsed, Parsed):
        result = invalid(inp.now, inp.generation, old, inp.parsed)
        result.status = truth.invalid_is_failed(result.status, inp.now, inp.generation)
    else:
        planner = _Planner(inp, inp.parsed, old)
        result = planner.run()
        if planner.retried:
            result.status["retried"] = planner.retried
        result.status = truth.store_readable(result.status, inp.facts, inp.now, inp.generation)
    result.warnings[:0] = problems
    return result
