"""Jobs and Pods -> what happened to each stage attempt (pure).

The operator keeps only these slim, immutable observations in memory (kopf indexes), never whole
objects: 500 recipes x a few Jobs and Pods stay a few MB. `attempt()` folds one Job and its Pods
into an `Attempt`: waiting, running, suspended, succeeded, failed or preempted, with its start and
end times and the message a user needs (the pod's termination message).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from fathom_jobs.redact import redact

from .api.recipe import GROUP, KIND
from .render import KUEUE_QUEUE_LABEL, LABEL_ATTEMPT, LABEL_RECIPE, LABEL_STAGE

ANNOTATION_FINGERPRINT = "fathom.dev/fingerprint"
# Pod-level reasons that mean "the node or the scheduler took the pod away", not "the code failed".
DISRUPTION_REASONS = frozenset({"Evicted", "Preempted", "NodeLost", "Shutdown", "NodeShutdown", "Terminated",
                                "NodeAffinity", "DeletionByPodGC", "DeletionByTaintManager"})
MESSAGE_LIMIT = 1000

AttemptState = Literal["waiting", "running", "suspended", "succeeded", "failed", "preempted"]
TERMINAL = ("succeeded", "failed", "preempted")


def parse_time(value: Any) -> datetime | None:
    """RFC 3339 as the API server writes it ('2025-01-02T03:04:05Z'), or None."""
    if not value or not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def format_time(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cpu_cores(quantity: Any) -> float:
    """A CPU quantity ('4', '500m', 2) in cores; unparseable -> 0 (then it simply costs nothing)."""
    text = str(quantity).strip()
    try:
        return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        return 0.0


def _requests(pod_spec: dict[str, Any]) -> tuple[tuple[str, float], ...]:
    """Per-pod CPU (cores) and extended resources (GPUs), summed over the containers."""
    totals: dict[str, float] = {}
    for container in pod_spec.get("containers") or []:
        requests = ((container.get("resources") or {}).get("requests")) or {}
        for name, quantity in requests.items():
            if name == "memory" or name == "ephemeral-storage":
                continue
            value = cpu_cores(quantity)
            totals[name] = totals.get(name, 0.0) + value
    return tuple(sorted(totals.items()))


def _attempt_number(labels: dict[str, str]) -> int | None:
    try:
        return int(labels.get(LABEL_ATTEMPT, ""))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class JobObs:
    name: str
    recipe: str
    stage: str
    attempt: int
    fingerprint: str | None
    suspended: bool
    kueue: bool
    parallelism: int
    requests: tuple[tuple[str, float], ...]
    start: datetime | None
    end: datetime | None
    outcome: Literal["active", "succeeded", "failed"]
    reason: str | None
    message: str | None
    deleting: bool
    owner_uid: str | None = None  # the FathomRecipe that controls it (ownerReferences), if any


@dataclass(frozen=True, slots=True)
class PodObs:
    name: str
    recipe: str
    stage: str
    attempt: int
    phase: str
    start: datetime | None
    end: datetime | None
    requests: tuple[tuple[str, float], ...]
    disruption: str | None  # why the pod was taken away (preemption, eviction, node gone)
    message: str | None  # the failed container's reason, exit code and termination message
    deleting: bool
    waiting: str | None = None  # why a pod has not started: unschedulable, image pull back-off, ...
    job: str | None = None  # its Job's name (label batch.kubernetes.io/job-name or job-name, or its owner)


def _waiting(status: dict[str, Any]) -> str | None:
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return f"{condition.get('reason') or 'Unschedulable'}: {condition.get('message') or 'not scheduled yet'}"
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
            return f"{waiting['reason']}: {waiting.get('message') or ''}".rstrip(": ")
    return None


def _owner(meta: Mapping[str, Any], kind: str, group: str | None = None) -> dict[str, Any] | None:
    for ref in meta.get("ownerReferences") or []:
        if not isinstance(ref, Mapping) or ref.get("kind") != kind:
            continue
        if group is None or str(ref.get("apiVersion") or "").split("/")[0] == group:
            return dict(ref)
    return None


def _text(value: Any, limit: int = MESSAGE_LIMIT) -> str | None:
    """A message from the cluster as the user may see it: a string, credentials redacted, bounded."""
    if value is None:
        return None
    return redact(str(value)[-4 * limit:])[-limit:]


def _labels(meta: Mapping[str, Any]) -> dict[str, str] | None:
    labels = meta.get("labels") or {}
    if not isinstance(labels, Mapping):
        return None
    return {str(k): str(v) for k, v in labels.items()}


def _ours(body: Mapping[str, Any]) -> tuple[Mapping[str, Any], dict[str, str], int] | None:
    """(metadata, labels, attempt) of an object carrying the operator's labels, else None."""
    meta = body.get("metadata") or {}
    labels = _labels(meta)
    if labels is None:
        return None
    attempt = _attempt_number(labels)
    if LABEL_RECIPE not in labels or LABEL_STAGE not in labels or attempt is None:
        return None
    return meta, labels, attempt


def observe_job(body: Mapping[str, Any]) -> JobObs | None:
    """A Job the operator created, or None for anything without our labels (or not shaped like a Job)."""
    try:
        return _observe_job(body)
    except (AttributeError, TypeError, ValueError, KeyError):
        return None


def _observe_job(body: Mapping[str, Any]) -> JobObs | None:
    found = _ours(body)
    if found is None:
        return None
    meta, labels, attempt = found
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    outcome: Literal["active", "succeeded", "failed"] = "active"
    end = None
    reason = message = None
    if "Complete" in conditions or "SuccessCriteriaMet" in conditions:
        outcome = "succeeded"
        done = conditions.get("Complete") or conditions["SuccessCriteriaMet"]
        end = parse_time(status.get("completionTime")) or parse_time(done.get("lastTransitionTime"))
    elif "Failed" in conditions or "FailureTarget" in conditions:
        outcome = "failed"
        failed = conditions.get("Failed") or conditions["FailureTarget"]
        end = parse_time(failed.get("lastTransitionTime")) or parse_time(status.get("completionTime"))
        reason, message = failed.get("reason"), _text(failed.get("message"))
    template = (spec.get("template") or {}).get("spec") or {}
    owner = _owner(meta, KIND, GROUP)
    return JobObs(
        name=meta.get("name", ""),
        recipe=labels[LABEL_RECIPE],
        stage=labels[LABEL_STAGE],
        attempt=attempt,
        fingerprint=(meta.get("annotations") or {}).get(ANNOTATION_FINGERPRINT),
        suspended=bool(spec.get("suspend")),
        kueue=KUEUE_QUEUE_LABEL in labels,
        parallelism=int(spec.get("parallelism") or 1),
        requests=_requests(template),
        start=parse_time(status.get("startTime")),
        end=end,
        outcome=outcome,
        reason=reason,
        message=message,
        deleting=bool(meta.get("deletionTimestamp")),
        owner_uid=str(owner["uid"]) if owner and owner.get("uid") else None,
    )


def _termination(status: dict[str, Any]) -> tuple[datetime | None, str | None]:
    """The latest container finish time and the first failed container's message."""
    finished: list[datetime] = []
    message = None
    for container in status.get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated") or (
            (container.get("lastState") or {}).get("terminated"))
        if not terminated:
            continue
        if at := parse_time(terminated.get("finishedAt")):
            finished.append(at)
        if message is None and terminated.get("exitCode", 0) != 0:
            text = (terminated.get("message") or "").strip()
            head = f"{terminated.get('reason') or 'Error'} (exit code {terminated.get('exitCode')})"
            message = f"{head}: {text}" if text else head
    return (max(finished) if finished else None), message


def observe_pod(body: Mapping[str, Any]) -> PodObs | None:
    """A Pod of the operator's Jobs, or None (as observe_job)."""
    try:
        return _observe_pod(body)
    except (AttributeError, TypeError, ValueError, KeyError):
        return None


def _observe_pod(body: Mapping[str, Any]) -> PodObs | None:
    found = _ours(body)
    if found is None:
        return None
    meta, labels, attempt = found
    status = body.get("status") or {}
    phase = status.get("phase") or "Pending"
    end, message = _termination(status)
    disruption = None
    for condition in status.get("conditions") or []:
        if condition.get("type") == "DisruptionTarget" and condition.get("status") == "True":
            disruption = condition.get("reason") or "DisruptionTarget"
            end = end or parse_time(condition.get("lastTransitionTime"))
    if disruption is None and status.get("reason") in DISRUPTION_REASONS:
        disruption = status["reason"]
    if phase in ("Failed", "Succeeded") and end is None:
        # No container ever finished (evicted before start): the last condition change is the end.
        times = [parse_time(c.get("lastTransitionTime")) for c in status.get("conditions") or []]
        end = max((t for t in times if t), default=None)
    if message is None and status.get("message"):
        message = f"{status.get('reason') or phase}: {status['message']}"
    return PodObs(
        name=meta.get("name", ""),
        recipe=labels[LABEL_RECIPE],
        stage=labels[LABEL_STAGE],
        attempt=attempt,
        phase=phase,
        start=parse_time(status.get("startTime")),
        end=end if phase in ("Failed", "Succeeded") or disruption else None,
        requests=_requests(body.get("spec") or {}),
        disruption=disruption,
        message=_text(message) if message else None,
        deleting=bool(meta.get("deletionTimestamp")),
        waiting=_text(_waiting(status)) if phase == "Pending" else None,
        job=labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")
        or ((_owner(meta, "Job") or {}).get("name")),
    )


@dataclass(frozen=True, slots=True)
class Attempt:
    stage: str
    attempt: int
    job: JobObs
    pods: tuple[PodObs, ...]
    state: AttemptState
    start: datetime | None
    end: datetime | None
    message: str | None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


def attempt(job: JobObs, pods: list[PodObs] | tuple[PodObs, ...]) -> Attempt:
    """One attempt's state. Preemption wins over failure: a pod the cluster took away is not a bug."""
    pods = tuple(sorted(pods, key=lambda p: p.name))
    starts = [p.start for p in pods if p.start] or ([job.start] if job.start else [])
    start = min(starts) if starts else None
    disrupted = next((p for p in pods if p.disruption), None)
    if job.outcome == "succeeded":
        return Attempt(job.stage, job.attempt, job, pods, "succeeded", start, job.end, None)
    if job.outcome == "failed":
        if disrupted is not None:
            why = f"pod {disrupted.name} was taken away ({disrupted.disruption})"
            return Attempt(job.stage, job.attempt, job, pods, "preempted", start, job.end, why)
        failed = next((p for p in pods if p.phase == "Failed" and p.message), None)
        if job.reason == "DeadlineExceeded":
            message = f"timed out: {job.message or 'the Job ran past activeDeadlineSeconds'}"
        elif failed is not None:
            message = f"pod {failed.name}: {failed.message}"
        else:
            message = f"{job.reason or 'Failed'}: {job.message or 'the Job failed'}"
        return Attempt(job.stage, job.attempt, job, pods, "failed", start, job.end, message[-MESSAGE_LIMIT:])
    if job.suspended:
        return Attempt(job.stage, job.attempt, job, pods, "suspended", start, None, None)
    if any(p.phase == "Running" for p in pods) or any(p.phase == "Succeeded" for p in pods):
        return Attempt(job.stage, job.attempt, job, pods, "running", start, None, None)
    return Attempt(job.stage, job.attempt, job, pods, "waiting", start, None, None)


def attempts(jobs: list[JobObs], pods: list[PodObs]) -> dict[str, list[Attempt]]:
    """Stage name -> its observed attempts, oldest first."""
    by_job: dict[str, list[PodObs]] = {}
    by_attempt: dict[tuple[str, int], list[PodObs]] = {}
    for pod in pods:
        if pod.job:
            by_job.setdefault(pod.job, []).append(pod)
        else:
            by_attempt.setdefault((pod.stage, pod.attempt), []).append(pod)
    result: dict[str, list[Attempt]] = {}
    for job in sorted(jobs, key=lambda j: (j.stage, j.attempt)):
        mine = by_job.get(job.name, []) + by_attempt.get((job.stage, job.attempt), [])
        result.setdefault(job.stage, []).append(attempt(job, mine))
    return result
