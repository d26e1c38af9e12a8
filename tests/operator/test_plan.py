"""plan(): spec + observed Jobs/Pods + status + store facts + now -> actions and the new status (pure).

`Sim` is a tiny in-memory cluster: it applies a plan's creates/suspends/deletes to its Jobs, keeps
the status the plan wrote, and lets a test move Jobs and Pods along at scripted times.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fathom_operator import plan as planning
from fathom_operator.kube import merge_patch
from fathom_operator.observe import observe_job, observe_pod
from fathom_operator.render import job_name
from fathom_operator.store_reader import Fact
from tests.support.helpers import TWO_PASSES, example, stage_index

T0 = datetime(2026, 3, 1, tzinfo=UTC)
NAME, NS = "fathom-r1-14b", "ml"


def ts(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


class Sim:
    def __init__(self, doc: dict[str, Any] | None = None, **spec: Any) -> None:
        self.doc = doc or example(TWO_PASSES)
        self.doc["spec"].setdefault("cache", False)
        self.doc["spec"].update(spec)
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, dict[str, Any]] = {}
        self.status: dict[str, Any] | None = None
        self.facts: dict[tuple[str, str], Fact] = {}
        self.now = T0
        self.generation = 1
        self.options = planning.Options()
        self.last: planning.Plan | None = None
        self.events: list[tuple[str, str, str]] = []

    def plan(self) -> planning.Plan:
        parsed = planning.parse(NAME, NS, copy.deepcopy(self.doc["spec"]))
        return planning.plan(planning.Inputs(
            name=NAME, namespace=NS, uid="uid-1", generation=self.generation, parsed=parsed, status=self.status,
            jobs=[j for j in map(observe_job, self.jobs.values()) if j],
            pods=[p for p in map(observe_pod, self.pods.values()) if p],
            facts=self.facts, now=self.now, options=self.options))

    def step(self, answers: dict[str, Any] | None = None, at: datetime | None = None,
             answer: Any = None) -> planning.Plan:
        """One reconcile: plan; answer store questions (default: nothing in the store); apply."""
        self.now = at or self.now
        result = self.plan()
        for _ in range(3):
            if not result.reads:
                break
            for read in result.reads:
                value = (answers or {}).get(read.kind, {"hit": False} if read.kind == "memo" else None)
                value = answer(read) if answer is not None else value
                self.facts[(read.kind, read.stage)] = Fact(read.key, value, self.now)
            result = self.plan()
        for objects in result.create:
            for obj in objects:
                if obj["kind"] == "Job":
                    self.jobs.setdefault(obj["metadata"]["name"], copy.deepcopy(obj))
        for name, suspend in result.suspend:
            self.jobs[name]["spec"]["suspend"] = suspend
        for kind, name in result.delete:
            if kind == "Job":
                self.jobs.pop(name, None)
                for pod in [p for p in self.pods if p.startswith(name + "-")]:
                    del self.pods[pod]
        self.status = result.status
        self.events += [(e.type, e.reason, e.message) for e in result.events]
        self.last = result
        return result

    # -- the Job controller --------------------------------------------------------------------

    def job_of(self, stage: str) -> str:
        names = [n for n, j in self.jobs.items() if j["metadata"]["labels"]["fathom.dev/stage"] == stage]
        return max(names, key=lambda n: int(self.jobs[n]["metadata"]["labels"]["fathom.dev/attempt"]))

    def start(self, stage: str, at: datetime) -> str:
        name = self.job_of(stage)
        job = self.jobs[name]
        for i in range(job["spec"]["parallelism"]):
            self.pods[f"{name}-{i}"] = {"metadata": {"name": f"{name}-{i}", "labels": job["spec"]["template"]["metadata"]["labels"]},
                                        "spec": job["spec"]["template"]["spec"],
                                        "status": {"phase": "Running", "startTime": ts(at)}}
        job["status"] = {"startTime": ts(at), "active": job["spec"]["parallelism"]}
        return name

    def _end_pods(self, name: str, at: datetime, **status: Any) -> None:
        for pod, body in self.pods.items():
            if pod.startswith(name + "-"):
                body["status"] = {**body["status"], **copy.deepcopy(status)}
                body["status"].setdefault("containerStatuses", [{"name": "stage", "state": {"terminated": {
                    "exitCode": 0, "finishedAt": ts(at)}}}])

    def succeed(self, stage: str, at: datetime) -> None:
        name = self.job_of(stage)
        self._end_pods(name, at, phase="Succeeded")
        self.jobs[name]["status"] |= {"completionTime": ts(at), "conditions": [
            {"type": "Complete", "status": "True", "lastTransitionTime": ts(at)}]}

    def fail(self, stage: str, at: datetime, message: str = "RuntimeError: CUDA out of memory") -> None:
        name = self.job_of(stage)
        self._end_pods(name, at, phase="Failed", containerStatuses=[{"name": "stage", "state": {"terminated": {
            "exitCode": 1, "reason": "Error", "message": message, "finishedAt": ts(at)}}}])
        self.jobs[name]["status"] |= {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                                      "lastTransitionTime": ts(at)}]}

    def preempt(self, stage: str, at: datetime) -> None:
        name = self.job_of(stage)
        self._end_pods(name, at, phase="Failed", conditions=[{"type": "DisruptionTarget", "status": "True",
                                                              "reason": "PreemptionByScheduler", "lastTransitionTime": ts(at)}],
                       containerStatuses=[{"name": "stage", "state": {"terminated": {"exitCode": 137, "finishedAt": ts(at)}}}])
        self.jobs[name]["status"] |= {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                                      "lastTransitionTime": ts(at)}]}

    def stage(self, name: str) -> dict[str, Any]:
        return self.status["stages"][name]

    def condition(self, kind: str) -> dict[str, Any]:
        return next(c for c in self.status["conditions"] if c["type"] == kind)

    def run_through(self, stages: list[str], at: datetime, hours: float = 1.0) -> datetime:
        """Start and succeed each stage in turn; returns the time after the last one."""
        for stage in stages:
            self.step(at=at)
            self.start(stage, at)
            at += timedelta(hours=hours)
            self.succeed(stage, at)
        self.step(at=at)
        return at


def jn(stage: str, attempt: int = 0) -> str:
    """The name of a Job of this module's recipe (uid-1): render.job_name, hash included."""
    return job_name(NAME, stage, attempt, uid="uid-1")


def created(result: planning.Plan) -> list[str]:
    return [o["metadata"]["name"] for objects in result.create for o in objects if o["kind"] == "Job"]


def test_a_new_recipe_starts_only_its_first_stage():
    sim = Sim()
    result = sim.step()
    assert created(result) == [jn('corpus', 0)]
    assert sim.stage("corpus")["phase"] == "Waiting" and sim.stage("difficulty")["phase"] == "Pending"
    assert sim.status["phase"] == "Running" and sim.status["currentStage"] == "corpus"
    assert ("Normal", "JobCreated", f"corpus: attempt 0, Job {jn('corpus', 0)}") in sim.events


def test_stages_start_when_all_their_inputs_succeeded_and_never_before():
    sim = Sim()
    at = sim.run_through(["corpus", "difficulty"], T0)
    assert set(created(sim.last)) == {jn('solve-6k', 0), jn('solve-16k', 0)}
    sim.start("solve-6k", at), sim.start("solve-16k", at)
    sim.succeed("solve-6k", at + timedelta(hours=1))
    assert created(sim.step(at=at + timedelta(hours=1))) == [jn('curriculum-set', 0)]
    assert sim.stage("shortest-set")["phase"] == "Pending"
    assert sim.stage("shortest-set")["message"] == "waiting for solve-16k"


def test_a_quiet_recipe_plans_the_same_status_again():
    sim = Sim()
    sim.run_through(["corpus"], T0)
    first = sim.status
    again = sim.step(at=sim.now + timedelta(hours=5))
    assert merge_patch(first, again.status) is None and not again.create and not again.events


def test_running_cost_is_live_and_finished_cost_is_kept_when_jobs_vanish():
    sim = Sim()
    at = sim.run_through(["corpus", "difficulty"], T0)
    sim.start("solve-6k", at)
    sim.step(at=at + timedelta(minutes=30))  # 4 pods x 8 GPUs x 0.5 h
    assert sim.stage("solve-6k")["gpuHours"] == 16.0 and sim.stage("solve-6k")["costUSD"] == 45.28
    corpus_cost = sim.stage("corpus")["costUSD"]
    assert corpus_cost == 0.16  # 1 h x 4 CPUs x $0.04
    del sim.jobs[jn('corpus', 0)], sim.pods[f"{jn('corpus', 0)}-0"]  # TTL controller, a user, ...
    sim.step()
    assert sim.stage("corpus")["costUSD"] == corpus_cost and sim.stage("corpus")["phase"] == "Succeeded"
    assert sim.status["cost"]["usd"] == 45.60  # corpus and difficulty 1 h each, plus the live sampler


def test_failed_attempts_retry_with_exponential_backoff_then_fail_with_the_pods_message():
    sim = Sim()
    sim.step()
    at = T0
    for attempt, wait in ((0, 30), (1, 60)):
        sim.start("corpus", at)
        at += timedelta(minutes=10)
        sim.fail("corpus", at, message=f"ValueError: bad row {attempt}")
        assert not created(sim.step(at=at))
        assert sim.stage("corpus")["phase"] == "Waiting"
        assert sim.stage("corpus")["nextRetryTime"] == ts(at + timedelta(seconds=wait))
        assert sim.last.requeue_after == wait
        assert not created(sim.step(at=at + timedelta(seconds=wait - 1)))
        at += timedelta(seconds=wait)
        assert created(sim.step(at=at)) == [jn('corpus', attempt + 1)]
    sim.start("corpus", at)
    sim.fail("corpus", at + timedelta(minutes=10), message="ValueError: bad row 2")
    sim.step(at=at + timedelta(minutes=10))
    corpus = sim.stage("corpus")
    assert (corpus["phase"], corpus["attempts"], corpus["failures"]) == ("Failed", 3, 3)
    assert "ValueError: bad row 2" in corpus["message"] and "Error (exit code 1)" in corpus["message"]
    assert sim.status["phase"] == "Failed"
    failed = sim.condition("Failed")
    assert failed["status"] == "True" and failed["reason"] == "StageFailed" and "bad row 2" in failed["message"]
    assert sim.stage("difficulty")["phase"] == "Skipped"
    # Every failed attempt was paid for and is waste: 3 x 10 min x 4 CPUs x $0.04.
    assert corpus["costUSD"] == 0.08 and sim.status["cost"]["wastedUSD"] == 0.08
    reasons = [r for _, r, _ in sim.events]
    assert reasons.count("AttemptFailed") == 2 and reasons[-3:] == ["StageFailed", "StagesSkipped", "RecipeFailed"]


def test_preemption_retries_at_once_without_using_the_retry_budget():
    sim = Sim()
    at = sim.run_through(["corpus", "difficulty"], T0)
    sim.start("solve-6k", at)
    for n in range(3):  # more preemptions than retries: still fine
        at += timedelta(minutes=15)
        sim.preempt("solve-6k", at)
        assert created(sim.step(at=at)) == [jn('solve-6k', n + 1)]
        sim.start("solve-6k", at)
    sim.step()
    st = sim.stage("solve-6k")
    assert (st["attempts"], st["failures"], st["preemptions"], st["phase"]) == (4, 0, 3, "Running")
    assert st["wastedGPUHours"] == 3 * 0.25 * 32  # three lost quarter-hours on 4 x 8 GPUs
    assert [r["outcome"] for r in st["history"]] == ["Preempted"] * 3
    assert "PreemptionByScheduler" in st["history"][0]["message"]
    assert any(r == "AttemptPreempted" for _, r, _ in sim.events)


def test_a_training_retry_resumes_from_the_newest_checkpoint_of_this_run():
    sim = Sim()
    at = sim.run_through(["corpus", "difficulty", "solve-6k", "curriculum-set"], T0)
    sim.start("sft-curriculum", at)
    sim.fail("sft-curriculum", at + timedelta(hours=2))
    sim.step(at=at + timedelta(hours=2))
    ckpt = f"s3://fathom-runs/{NS}/{NAME}/sft-curriculum/checkpoints/step-400"
    result = sim.step(answers={"checkpoint": ckpt}, at=at + timedelta(hours=3))
    job = next(o for objects in result.create for o in objects if o["kind"] == "Job")
    document = json.loads(next(e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
                               if e["name"] == "FATHOM_JOB_SPEC"))
    assert job["metadata"]["name"] == jn('sft-curriculum', 1) and document["resumeFrom"] == ckpt
    read = next(r for r in sim.facts if r == ("checkpoint", "sft-curriculum"))
    assert sim.facts[read].value == ckpt


def test_budget_blocks_new_stages_and_stop_all_suspends_running_ones():
    sim = Sim(budgetUSD=100)
    at = sim.run_through(["corpus", "difficulty"], T0)
    sim.start("solve-6k", at), sim.start("solve-16k", at)
    sim.step(at=at + timedelta(hours=1))  # 2 x 32 GPU-hours = $181.12 > $100
    assert sim.condition("BudgetExceeded")["status"] == "True"
    assert "$181.44 of $100.00" in sim.condition("BudgetExceeded")["message"]
    assert not sim.last.suspend  # no-new-stages: running stages may finish
    sim.succeed("solve-6k", at + timedelta(hours=1))
    sim.step()
    assert sim.stage("curriculum-set")["phase"] == "Pending" and "budget" in sim.stage("curriculum-set")["message"]
    assert not created(sim.last)
    sim.doc["spec"]["budgetPolicy"] = "stop-all"
    result = sim.step()
    assert result.suspend == [(jn('solve-16k', 0), True)]
    sim.step()
    assert sim.stage("solve-16k")["phase"] == "Suspended" and sim.status["phase"] == "Failed"
    assert sim.condition("Failed")["reason"] == "BudgetExceeded"
    sim.doc["spec"]["budgetUSD"] = 5000  # raising the budget continues the recipe
    result = sim.step()
    assert (jn('solve-16k', 0), False) in result.suspend and created(result) == [jn('curriculum-set', 0)]


def test_suspend_suspends_running_jobs_starts_nothing_and_resume_undoes_it():
    sim = Sim()
    sim.step()
    sim.start("corpus", T0)
    sim.doc["spec"]["suspend"] = True
    result = sim.step(at=T0 + timedelta(minutes=5))
    assert result.suspend == [(jn('corpus', 0), True)]
    sim.succeed("corpus", T0 + timedelta(minutes=5))  # it finished just before the suspend landed
    assert not created(sim.step())
    assert sim.status["phase"] == "Suspended" and sim.condition("Suspended")["status"] == "True"
    assert sim.stage("difficulty")["message"].startswith("held: the recipe is suspended")
    sim.doc["spec"]["suspend"] = False
    assert created(sim.step()) == [jn('difficulty', 0)]
    assert ("Normal", "Resumed", "spec.suspend is false: resuming") in sim.events


def test_kueue_jobs_wait_in_the_queue_and_are_not_unsuspended_by_the_operator():
    sim = Sim(queueName="team-a")
    result = sim.step()
    assert sim.jobs[created(result)[0]]["spec"]["suspend"] is True
    sim.step()
    assert not sim.last.suspend and sim.stage("corpus")["phase"] == "Waiting"
    assert sim.stage("corpus")["message"] == "queued in Kueue (team-a)"


def test_an_invalid_recipe_gets_the_field_path_and_no_jobs():
    doc = example(TWO_PASSES)
    doc["spec"]["stages"][stage_index(doc, "sft-curriculum")]["data"] = "curriculum-sett"
    sim = Sim(doc)
    result = sim.step()
    assert not result.create and sim.status["phase"] == "Failed"
    invalid = sim.condition("Invalid")
    assert invalid["status"] == "True" and invalid["reason"] == "InvalidSpec"
    assert invalid["message"] == 'spec.stages[6].data: no stage named "curriculum-sett" (did you mean "curriculum-set"?)'
    assert sim.events == [("Warning", "Invalid", invalid["message"])]
    assert merge_patch(sim.status, sim.step().status) is None and len(sim.events) == 1  # said once


def test_editing_a_stage_reruns_it_and_its_downstream_and_keeps_the_rest():
    sim = Sim()
    at = sim.run_through(["corpus", "difficulty", "solve-6k", "solve-16k", "curriculum-set", "shortest-set"], T0)
    sim.start("sft-curriculum", at)
    sim.start("sft-shortest", at)
    sim.step(at=at + timedelta(hours=1))
    before = {n: s["fingerprint"] for n, s in sim.status["stages"].items()}
    sim.doc["spec"]["stages"][stage_index(sim.doc, "curriculum-set")]["select"] = {"difficulty": {"min": 6}}
    sim.generation = 2
    result = sim.step(at=at + timedelta(hours=2))
    after = {n: s["fingerprint"] for n, s in sim.status["stages"].items()}
    changed = {n for n in after if after[n] != before[n]}
    assert changed == {"curriculum-set", "sft-curriculum", NAME, "eval"}
    assert ("Job", jn('sft-curriculum', 0)) in result.delete  # running with the old inputs
    assert created(result) == [jn('curriculum-set', 1)]  # attempt numbers keep counting
    assert sim.stage("sft-shortest")["phase"] == "Running" and sim.stage("solve-6k")["phase"] == "Succeeded"
    history = sim.stage("sft-curriculum")["history"]
    assert [r["outcome"] for r in history] == ["Superseded"] and history[0]["gpuHours"] == 16.0
    assert sim.stage("sft-curriculum")["gpuHours"] == 16.0  # what the stopped run cost stays counted
    # Stages that had not started yet just wait for their new inputs; only the others "rerun".
    assert ("Normal", "Replanned", "spec changed: rerunning curriculum-set, and downstream sft-curriculum") in sim.events
    assert sim.status["observedGeneration"] == 2


def test_memoized_stage_is_cached_with_no_job_and_no_cost():
    sim = Sim(cache=True)
    result = sim.plan()
    assert [r.kind for r in result.reads] == ["memo"] and not result.create
    memo = result.reads[0]
    assert memo.args["output"] == f"s3://fathom-runs/{NS}/{NAME}/corpus/" and memo.args["stage_type"] == "prepare"
    asked = []
    result = sim.step(answer=lambda read: asked.append((read.kind, read.stage)) or {"hit": read.stage == "corpus"})
    assert sim.stage("corpus")["phase"] == "Cached" and sim.stage("corpus")["costUSD"] == 0.0
    # Each stage is checked just before it would start; a cached one's metrics are read like a finished one's.
    assert asked == [("memo", "corpus"), ("metrics", "corpus"), ("memo", "difficulty")]
    assert created(result) == [jn('difficulty', 0)]
    assert ("Normal", "StageCached", "corpus: the store already holds this output; no Job needed") in sim.events


def test_progress_is_read_at_most_every_30_seconds_per_running_stage():
    sim = Sim()
    sim.step()
    sim.start("corpus", T0)
    result = sim.step(answers={"progress": {"step": 50, "total": 200}}, at=T0 + timedelta(minutes=10))
    assert sim.stage("corpus")["progress"] == {"fraction": 0.25, "step": 50, "total": 200, "etaSeconds": 1800}
    assert sim.status["progress"] == "0%"  # corpus weighs 1 of 157 GPU-weighted units
    assert not sim.plan().reads  # read just now
    sim.now += timedelta(seconds=31)
    assert [r.kind for r in sim.plan().reads] == ["progress"]
    del result


def test_conditions_keep_their_transition_time_until_they_flip():
    sim = Sim()
    sim.step()
    ready = sim.condition("Progressing")
    sim.start("corpus", T0)
    sim.step(at=T0 + timedelta(hours=1))
    assert sim.condition("Progressing")["lastTransitionTime"] == ready["lastTransitionTime"]
    sim.doc["spec"]["suspend"] = True
    sim.step(at=T0 + timedelta(hours=2))
    assert sim.condition("Progressing")["status"] == "False"
    assert sim.condition("Progressing")["lastTransitionTime"] == ts(T0 + timedelta(hours=2))


def test_a_restarted_operator_derives_the_same_status_from_the_jobs_alone():
    sim = Sim()
    at = sim.run_through(["corpus", "difficulty"], T0)
    sim.start("solve-6k", at)
    sim.step(at=at + timedelta(minutes=20))
    kept = sim.status
    sim.status = None  # status patch lost (killed between create and patch)
    sim.step()
    for name in ("corpus", "difficulty", "solve-6k", "solve-16k"):
        mine, theirs = sim.stage(name), kept["stages"][name]
        assert {k: mine.get(k) for k in ("phase", "attempts", "job", "gpuHours", "costUSD")} == \
               {k: theirs.get(k) for k in ("phase", "attempts", "job", "gpuHours", "costUSD")}
    assert not created(sim.last)


@pytest.mark.parametrize("deleted_stage", ["eval"])
def test_a_stage_removed_from_the_recipe_keeps_its_cost(deleted_stage):
    sim = Sim()
    sim.run_through(["corpus"], T0)
    sim.doc["spec"]["stages"] = [s for s in sim.doc["spec"]["stages"] if s["name"] != deleted_stage]
    sim.step()
    assert deleted_stage not in sim.status["stages"] and sim.stage("corpus")["costUSD"] == 0.16


def test_progress_weighs_stages_by_the_gpus_they_request():
    from fathom_operator.conditions import progress_percent

    weights = {"corpus": 1, "solve": 32, "sft": 16}
    assert progress_percent({"corpus": "Succeeded", "solve": "Running", "sft": "Pending"},
                            {"solve": 0.5}, weights) == "34%"  # (1 + 16) / 49
    assert progress_percent({"corpus": "Cached", "solve": "Succeeded", "sft": "Running"}, {"sft": 1.0}, weights) == "99%"
    assert progress_percent(dict.fromkeys(weights, "Succeeded"), {}, weights) == "100%"


def test_eval_results_and_report_land_on_the_status():
    sim = Sim()
    table = {"base": {"aime25": {"pass@1": 45.5, "cons@k": 63.33, "k": 64, "meanTokens": 11000.0, "samples": 1920}},
             "fathom-r1-14b": {"aime25": {"pass@1": 52.71, "cons@k": 76.7, "k": 64}}}

    def answer(read):
        if read.kind == "metrics" and read.stage == "eval":
            return {"metrics": {"results": table, "resultsFile": "results.json"}, "results": None}
        return {"hit": False} if read.kind == "memo" else None

    at = T0
    for stage in ["corpus", "difficulty", "solve-6k", "solve-16k", "curriculum-set", "shortest-set",
                  "sft-curriculum", "sft-shortest", NAME, "eval"]:
        sim.step(at=at, answer=answer)
        sim.start(stage, at)
        at += timedelta(hours=1)
        sim.succeed(stage, at)
    sim.step(at=at, answer=answer)
    assert sim.status["phase"] == "Succeeded"
    assert sim.status["results"]["fathom-r1-14b"]["aime25"] == {"pass@1": 52.71, "cons@k": 76.7, "k": 64, "samples": 0}
    assert sim.status["results"]["base"]["aime25"]["meanTokens"] == 11000.0
    assert sim.status["report"] == f"s3://fathom-runs/{NS}/{NAME}/eval/report.html"
    assert sim.stage("eval")["metrics"]["resultsFile"] == "results.json"


def test_a_stage_whose_pods_cannot_start_says_why():
    sim = Sim()
    sim.step()
    name = sim.job_of("corpus")
    sim.pods[f"{name}-0"] = {
        "metadata": {"name": f"{name}-0", "labels": sim.jobs[name]["spec"]["template"]["metadata"]["labels"]},
        "spec": sim.jobs[name]["spec"]["template"]["spec"],
        "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                                       "message": "0/12 nodes are available: 12 node(s) didn't match Pod's node affinity/selector."}]}}
    sim.step()
    assert sim.stage("corpus")["phase"] == "Waiting"
    assert sim.stage("corpus")["message"] == ("waiting for its pods to start (Unschedulable: 0/12 nodes are available: "
                                              "12 node(s) didn't match Pod's node affinity/selector.)")


def test_a_running_job_deleted_behind_the_operators_back_keeps_its_cost_and_is_restarted():
    sim = Sim()
    at = sim.run_through(["corpus", "difficulty"], T0)
    sim.start("solve-6k", at)
    sim.step(at=at + timedelta(hours=1))
    assert sim.stage("solve-6k")["gpuHours"] == 32.0
    job = sim.job_of("solve-6k")
    del sim.jobs[job]
    for pod in [p for p in sim.pods if p.startswith(job)]:
        del sim.pods[pod]
    result = sim.step(at=at + timedelta(hours=2))
    st = sim.stage("solve-6k")
    assert st["history"][-1]["outcome"] == "Preempted" and "disappeared" in st["history"][-1]["message"]
    assert st["gpuHours"] == 32.0 and st["wastedGPUHours"] == 32.0 and st["failures"] == 0
    assert created(result) == [jn('solve-6k', 1)]


def test_every_status_the_planner_writes_fits_the_crd_schema():
    import jsonschema

    from fathom_operator.api.crd import custom_resource_definition

    schema = custom_resource_definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    sim = Sim(budgetUSD=50)
    at = sim.run_through(["corpus", "difficulty"], T0)
    sim.start("solve-6k", at), sim.start("solve-16k", at)
    sim.preempt("solve-6k", at + timedelta(minutes=20))
    sim.fail("solve-16k", at + timedelta(minutes=30))
    sim.step(at=at + timedelta(hours=1))
    for status in (sim.status, Sim(doc={**example(TWO_PASSES), "spec": {**example(TWO_PASSES)["spec"],
                                                                                    "stages": []}}).step().status):
        jsonschema.validate(status, schema)
    assert sim.condition("BudgetExceeded")["status"] == "True"


def test_a_recipe_name_too_long_for_a_label_is_invalid_before_any_job():
    parsed = planning.parse("r" * 64, NS, example(TWO_PASSES)["spec"])
    assert [str(e) for e in parsed] == [
        "metadata.name: 64 characters; at most 63 for a recipe the operator runs (its Jobs carry it in the "
        "fathom.dev/recipe label)"]
