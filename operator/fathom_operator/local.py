"""`fathom run --local FILE`: the operator's own plan, driven without Kubernetes.

`LocalCluster` plays the API server and the Job controller for the objects `plan()` asks for: each
pod of a rendered Job is a local process (`python -m fathom_jobs <type>` with the Job's env), and
the cluster reports Jobs and Pods back in their Kubernetes shapes, so `observe`, `plan`, `cost`
and the status are exactly the operator's. Outputs go to a file:// store (`./runs` by default);
rerunning finds every stage's output by fingerprint (memoized) and resumes unfinished ones.

A local process uses about one core, so each pod is priced as one CPU at the pool's
`cpuHourUSD` (the CPU-seconds it ran), whatever the Job requests on a cluster.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from . import plan as planning
from .observe import format_time, observe_job, observe_pod
from .store_reader import StoreReader
from .validate import RecipeInvalid, load_document, validate_document

NAMESPACE = "local"
LOG_TAIL_BYTES = 4000


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class LocalPod:
    name: str
    index: int
    command: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    start: datetime | None = None
    end: datetime | None = None
    exit_code: int | None = None


@dataclass
class LocalJob:
    manifest: dict[str, Any]
    pods: list[LocalPod]
    suspended: bool = False
    created: datetime = field(default_factory=utcnow)


class LocalCluster:
    """Runs rendered Jobs as processes; at most `slots` pods at once (the rest wait, Pending)."""

    def __init__(self, workdir: Path, *, slots: int = 1, clock: Callable[[], datetime] = utcnow,
                 extra_env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.slots = slots
        self.clock = clock
        self.extra_env = extra_env or {}
        self.jobs: dict[str, LocalJob] = {}

    # -- what plan() asked for ----------------------------------------------------------------
    def create(self, obj: dict[str, Any]) -> None:
        if obj.get("kind") != "Job" or obj["metadata"]["name"] in self.jobs:
            return  # headless Services mean nothing without a network; a second create is a 409
        name = obj["metadata"]["name"]
        container = obj["spec"]["template"]["spec"]["containers"][0]
        env = expand_env(container.get("env", []))
        env.pop("HF_HOME", None)  # /scratch exists only in the pod
        command = [sys.executable if c == "python" else c for c in container["command"]]
        completions = int(obj["spec"].get("completions") or 1)
        pods = [LocalPod(f"{name}-{i}", i, command, {**env, "JOB_COMPLETION_INDEX": str(i)}, self.logs / f"{name}-{i}.log")
                for i in range(completions)]
        self.jobs[name] = LocalJob(copy.deepcopy(obj), pods, suspended=bool(obj["spec"].get("suspend")))

    def suspend(self, name: str, suspend: bool) -> None:
        job = self.jobs.get(name)
        if job is None:
            return
        job.suspended = suspend
        if suspend:  # like the Job controller: active pods are deleted, finished ones stay
            for pod in job.pods:
                if pod.process is not None and pod.exit_code is None:
                    self._kill(pod)
                    pod.process, pod.start = None, None

    def delete(self, kind: str, name: str) -> None:
        job = self.jobs.pop(name, None) if kind == "Job" else None
        for pod in job.pods if job else []:
            if pod.process is not None and pod.exit_code is None:
                self._kill(pod)

    def close(self) -> None:
        for job in self.jobs.values():
            for pod in job.pods:
                if pod.process is not None and pod.exit_code is None:
                    self._kill(pod)

    # -- the Job controller ---------------------------------------------------------------------
    def step(self) -> None:
        """Reap finished pods, then start waiting ones while slots are free (oldest Job first)."""
        running = 0
        for job in self.jobs.values():
            for pod in job.pods:
                if pod.process is not None and pod.exit_code is None:
                    code = pod.process.poll()
                    if code is None:
                        running += 1
                    else:
                        pod.exit_code, pod.end = code, self.clock()
        for job in sorted(self.jobs.values(), key=lambda j: j.created):
            if job.suspended or self._failed(job):
                continue
            for pod in job.pods:
                if running >= self.slots:
                    return
                if pod.process is None:
                    self._start(pod)
                    running += 1

    def busy(self) -> bool:
        return any(p.process is not None and p.exit_code is None for j in self.jobs.values() for p in j.pods)

    def _start(self, pod: LocalPod) -> None:
        env = {**os.environ, **self.extra_env, **pod.env}
        with pod.log.open("ab") as log:
            pod.process = subprocess.Popen(pod.command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True)
        pod.start = self.clock()

    @staticmethod
    def _kill(pod: LocalPod) -> None:
        assert pod.process is not None
        try:
            os.killpg(pod.process.pid, signal.SIGTERM)
            pod.process.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(pod.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    @staticmethod
    def _failed(job: LocalJob) -> bool:
        return any(p.exit_code not in (None, 0) for p in job.pods)  # backoffLimit 0

    # -- what observe() reads -------------------------------------------------------------------
    def job_bodies(self) -> list[dict[str, Any]]:
        bodies = []
        for job in self.jobs.values():
            body = copy.deepcopy(job.manifest)
            body["spec"]["suspend"] = job.suspended
            starts = [p.start for p in job.pods if p.start]
            status: dict[str, Any] = {}
            if starts:
                status["startTime"] = format_time(min(starts))
            ends = [p.end for p in job.pods if p.end]
            if self._failed(job):
                failed = next(p for p in job.pods if p.exit_code not in (None, 0))
                status["conditions"] = [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                         "message": f"pod {failed.name} exited with {failed.exit_code}",
                                         "lastTransitionTime": format_time(failed.end)}]
            elif job.pods and all(p.exit_code == 0 for p in job.pods):
                status["completionTime"] = format_time(max(ends))
                status["conditions"] = [{"type": "Complete", "status": "True",
                                         "lastTransitionTime": status["completionTime"]}]
            body["status"] = status
            bodies.append(body)
        return bodies

    def pod_bodies(self) -> list[dict[str, Any]]:
        bodies = []
        for name, job in self.jobs.items():
            template = job.manifest["spec"]["template"]
            for pod in job.pods:
                if pod.process is None:
                    continue
                spec = copy.deepcopy(template["spec"])
                # One local process ~ one core: that is what the run is priced at.
                spec["containers"][0]["resources"] = {"requests": {"cpu": "1"}}
                labels = {**template["metadata"]["labels"], "batch.kubernetes.io/job-name": name}
                status: dict[str, Any] = {"startTime": format_time(pod.start)}
                if pod.exit_code is None:
                    status["phase"] = "Running"
                else:
                    status["phase"] = "Succeeded" if pod.exit_code == 0 else "Failed"
                    terminated = {"exitCode": pod.exit_code, "finishedAt": format_time(pod.end),
                                  "reason": "Completed" if pod.exit_code == 0 else "Error"}
                    if pod.exit_code:
                        terminated["message"] = _tail(pod.log)
                    status["containerStatuses"] = [{"name": "stage", "state": {"terminated": terminated}}]
                bodies.append({"metadata": {"name": pod.name, "labels": labels}, "spec": spec, "status": status})
        return bodies


def expand_env(entries: list[dict[str, Any]], context: dict[str, str] | None = None) -> dict[str, str]:
    """A container's literal env values as the kubelet hands them to the process: each value has
    `$(VAR)` replaced by an earlier variable (or `context`) and `$$` turned into `$` (render escapes
    every `$`, so the process sees the text the operator wrote)."""
    known = dict(context or {})
    result: dict[str, str] = {}
    for entry in entries:
        if "value" not in entry:
            continue
        value = _expand(str(entry["value"]), known)
        known[entry["name"]] = result[entry["name"]] = value
    return result


def _expand(text: str, known: dict[str, str]) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] != "$" or i + 1 >= len(text):
            out.append(text[i])
            i += 1
        elif text[i + 1] == "$":
            out.append("$")
            i += 2
        elif text[i + 1] == "(" and (close := text.find(")", i + 2)) != -1:
            name = text[i + 2:close]
            out.append(known.get(name, f"$({name})"))
            i = close + 1
        else:
            out.append(text[i:i + 2])
            i += 2
    return "".join(out)


def _tail(path: Path) -> str:
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - LOG_TAIL_BYTES))
        return handle.read().decode(errors="replace").strip()


def _absolute(uri: str, base: Path) -> str:
    """`file://./x` / `file://x` -> file:///abs/x, so every process and the store agree on it."""
    if not uri.startswith("file://") or uri.startswith("file:///"):
        return uri
    return "file://" + str((base / uri[len("file://"):]).resolve())


def local_spec(doc: dict[str, Any], base: Path, runs_dir: Path) -> dict[str, Any]:
    """The recipe's spec as the local run uses it: storage under runs_dir, relative URIs resolved."""
    spec = copy.deepcopy(doc.get("spec") or {})
    spec["storage"] = {"uri": "file://" + str(runs_dir.resolve())}
    spec.pop("queueName", None)
    if isinstance(spec.get("baseModel"), str):
        spec["baseModel"] = _absolute(spec["baseModel"], base)
    for stage in spec.get("stages") or []:
        stage.pop("queueName", None)  # no Kueue here: a queued Job would wait for an admission that never comes
        for key in ("model", "data"):
            if isinstance(stage.get(key), str):
                stage[key] = _absolute(stage[key], base)
        for source in stage.get("sources") or []:
            if isinstance(source, dict) and isinstance(source.get("uri"), str):
                source["uri"] = _absolute(source["uri"], base)
    return spec


@dataclass
class LocalRun:
    name: str
    spec: dict[str, Any]
    cluster: LocalCluster
    reader: StoreReader = field(default_factory=StoreReader)
    clock: Callable[[], datetime] = utcnow
    options: planning.Options = field(default_factory=lambda: planning.Options(backoff_seconds=2.0, progress_seconds=2.0))
    status: dict[str, Any] = field(default_factory=dict)
    facts: dict[tuple[str, str], Any] = field(default_factory=dict)
    pending_reads: bool = False

    def __post_init__(self) -> None:
        self.parsed = planning.parse(self.name, NAMESPACE, self.spec)

    def tick(self) -> planning.Plan:
        """One reconcile: observe the local Jobs, plan, answer store reads, apply."""
        self.cluster.step()
        jobs = [j for j in map(observe_job, self.cluster.job_bodies()) if j]
        pods = [p for p in map(observe_pod, self.cluster.pod_bodies()) if p]
        now = self.clock()
        result = None
        for _ in range(3):
            result = planning.plan(planning.Inputs(
                name=self.name, namespace=NAMESPACE, uid=None, generation=1, parsed=self.parsed,
                status=self.status, jobs=jobs, pods=pods, facts=self.facts, now=now, options=self.options))
            if not result.reads:
                break
            for read in result.reads:
                self.facts[(read.kind, read.stage)] = self.reader.read(read, now)
        assert result is not None
        for objects in result.create:
            for obj in objects:
                self.cluster.create(obj)
        for job, suspend in result.suspend:
            self.cluster.suspend(job, suspend)
        for kind, name in result.delete:
            self.cluster.delete(kind, name)
        self.cluster.step()
        self.status = result.status
        self.pending_reads = bool(result.reads)
        return result

    def finished(self) -> bool:
        # Store reads still open (e.g. a cached eval stage's results) would change the status.
        done = self.status.get("phase") in ("Succeeded", "Failed") and not self.pending_reads
        return done and not self.cluster.busy()


def load_local(path: Path, runs_dir: Path) -> tuple[str, dict[str, Any]]:
    """Read and validate the recipe file; RecipeInvalid (field paths) on a bad one."""
    doc = load_document(path.read_text(), source=str(path))
    name = (doc.get("metadata") or {}).get("name") or path.stem
    # Relative file:// URIs are relative to the working directory, as inside the jobs.
    spec = local_spec(doc, Path.cwd(), runs_dir)
    validate_document({**doc, "spec": spec})
    return name, spec


def run_local(path: Path, runs_dir: Path, *, slots: int = 1, poll_seconds: float = 1.0,
              display: Callable[[LocalRun], None] | None = None) -> LocalRun:
    """Run a recipe to the end on this machine; returns the run with its final status."""
    name, spec = load_local(path, runs_dir)
    workdir = runs_dir / NAMESPACE / name
    workdir.mkdir(parents=True, exist_ok=True)
    cache = runs_dir / ".cache"
    cluster = LocalCluster(workdir, slots=slots, extra_env={
        "FATHOM_CACHE_DIR": str(cache.resolve()),
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str((cache / "torch_extensions").resolve())),
        "TOKENIZERS_PARALLELISM": "false",
    })
    run = LocalRun(name, spec, cluster)
    try:
        while True:
            result = run.tick()
            if display:
                display(run)
            if run.finished():
                break
            wait = poll_seconds if result.requeue_after is None else min(poll_seconds, max(0.05, result.requeue_after))
            time.sleep(wait)
    finally:
        cluster.close()
    (workdir / "status.yaml").write_text(yaml.safe_dump(run.status, sort_keys=False))
    return run


__all__ = ["LocalCluster", "LocalRun", "RecipeInvalid", "load_local", "local_spec", "run_local"]
