"""One reconcile of one recipe: observe, plan, apply. And the per-recipe loop that runs it.

Each recipe has one worker loop (a kopf daemon), so a recipe is never reconciled twice at once.
It runs on start (create, or operator restart = resume), whenever the spec, one of its Jobs or one
of its Pods changes (a poke), and on a timer (`resync_seconds`; costs of running pods are at most
that stale). A reconcile:

1. reads the Jobs and Pods of the recipe from kopf's indexes (filled before any worker starts, so a
   restarted operator sees everything it created before it decides anything);
2. calls `plan.plan()`, answering its store questions on a thread and planning again;
3. creates Jobs and Services (409 = already there: fine when this recipe controls it, an error on
   the stage when another object does - it is never adopted), suspends, resumes, deletes;
4. patches the status with the difference only, and only if there is one;
5. posts the plan's events (and queues the ones a recipe's `spec.notify` asks for to the webhooks).

The status the worker last wrote is remembered: it is the only writer of the status, so it never
re-derives anything from a status echo that has not arrived yet. Nothing one recipe does can stop
another's loop: a failed reconcile is logged, counted, reported on that recipe as a Warning event
(once per distinct error) and tried again on the next tick. Store reads are bounded in time; a
failed one is a stage message, a Warning event (once per distinct error) and, while reads the status
depends on keep failing, condition StoreReadable=False (truth.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fathom_jobs.redact import redact

from . import plan as planning
from .api.status import RecipeStatus
from .kube import Gone, Kube, api_message, controller_of, load_configuration, merge_patch
from .metrics import OperatorMetrics
from .notify import Notifier
from .observe import JobObs, PodObs
from .policy import policy_from_defaults
from .render import LABEL_RECIPE
from .retry import ANNOTATION_RETRY
from .store_reader import Fact, Opener, StoreReader

# A Job this worker created is waited for (no plan) until its watch event arrives, at most this long:
# planning without it would start the same attempt again (a second POST, a 409, a duplicate event).
CREATED_WAIT_SECONDS = 10.0
WARNED_LIMIT = 256  # distinct warnings remembered per recipe (then forgotten, so memory stays flat)

OWN_STATUS_KEYS = frozenset(f.alias or n for n, f in RecipeStatus.model_fields.items())


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class OperatorConfig:
    resync_seconds: float = 30.0
    settle_seconds: float = 0.1  # after a poke, wait this long so a burst of pod events makes one reconcile
    options: planning.Options = field(default_factory=planning.Options)
    defaults: dict[str, Any] | None = None
    clock: Callable[[], datetime] = utcnow
    kubeconfig: str | None = None
    store_opener: Opener | None = None
    api_threads: int = 8
    store_threads: int = 4
    store_read_seconds: float = 60.0  # one batch of store reads; past it they count as failed
    conflict_seconds: float = 120.0  # a name taken by another object is tried again this much later
    metrics: OperatorMetrics | None = None
    finalizer: str = "fathom.dev/operator"
    notifier: Notifier | None = None  # webhooks for spec.notify (notify.py); None: no notifications

    @classmethod
    def from_env(cls, **overrides: Any) -> OperatorConfig:
        """FATHOM_RESYNC_SECONDS and FATHOM_RETRY_BACKOFF_SECONDS tune the timers (tests, demos)."""
        options = planning.Options(backoff_seconds=float(os.environ.get("FATHOM_RETRY_BACKOFF_SECONDS", 30)))
        return cls(resync_seconds=float(os.environ.get("FATHOM_RESYNC_SECONDS", 30)), options=options, **overrides)


def plain(value: Any) -> Any:
    """kopf's body views -> plain dicts and lists (for hashing, pydantic and JSON). Iterative: no
    nesting a client sends can exhaust the stack."""
    if not isinstance(value, (Mapping, list, tuple)):
        return value
    root: Any = {} if isinstance(value, Mapping) else []
    stack: list[tuple[Any, Any]] = [(value, root)]
    while stack:
        source, target = stack.pop()
        items = source.items() if isinstance(source, Mapping) else enumerate(source)
        for key, item in items:
            copied: Any = item
            if isinstance(item, Mapping):
                copied = {}
                stack.append((item, copied))
            elif isinstance(item, (list, tuple)):
                copied = []
                stack.append((item, copied))
            if isinstance(target, dict):
                target[key] = copied
            else:
                target.append(copied)
    return root


@dataclass
class Worker:
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    facts: dict[tuple[str, str], Fact] = field(default_factory=dict)
    spec_key: str | None = None
    parsed: Any = None
    status: dict[str, Any] | None = None
    warned: set[str] = field(default_factory=set)
    conflicts: dict[str, tuple[str, float]] = field(default_factory=dict)  # name -> (why, when seen)
    created: dict[str, float] = field(default_factory=dict)  # Job name -> when this worker created it
    services_swept: bool = False  # the recipe's Services listed once (no watch on them): none outlives its Job

    def first_time(self, message: str) -> bool:
        """True once per distinct message (the set is forgotten when it grows past WARNED_LIMIT)."""
        if message in self.warned:
            return False
        if len(self.warned) >= WARNED_LIMIT:
            self.warned.clear()
        self.warned.add(message)
        return True


class Runtime:
    """Everything one operator process shares: API client, store reader, workers, metrics."""

    def __init__(self, config: OperatorConfig, kube: Kube | None = None) -> None:
        self.config = config
        self.kube = kube or Kube(load_configuration(config.kubeconfig), config.api_threads)
        policy = policy_from_defaults(config.defaults)
        # Defence in depth: even a read the planner asked for never reaches an endpoint the admin did not allow.
        self.reader = StoreReader(config.store_opener,
                                  allowed_endpoints=policy.storage_endpoints if policy is not None else None)
        self.store_pool = ThreadPoolExecutor(config.store_threads, thread_name_prefix="store")
        self.metrics = config.metrics or OperatorMetrics()
        self.workers: dict[tuple[str, str], Worker] = {}
        self.log = logging.getLogger("fathom.operator")

    def poke(self, namespace: str, name: str) -> None:
        worker = self.workers.get((namespace, name))
        if worker is not None:
            worker.wake.set()

    def spec_changed(self, namespace: str, name: str, spec: Any) -> None:
        worker = self.workers.get((namespace, name))
        if worker is not None and worker.spec_key != _spec_key(plain(spec)):
            worker.wake.set()

    def close(self) -> None:
        self.store_pool.shutdown(wait=False, cancel_futures=True)
        self.kube.close()

    async def run_worker(self, body: Any, namespace: str, name: str, stopped: Any,
                         jobs: Any, pods: Any, logger: logging.Logger) -> None:
        # Always a fresh worker: a recipe deleted and re-created under the same name is a new object.
        worker = self.workers[(namespace, name)] = Worker()

        async def relay() -> None:  # the stop flag wakes the loop too
            await stopped.wait()
            worker.wake.set()

        relay_task = asyncio.create_task(relay())
        try:
            while not stopped:
                worker.wake.clear()
                began = time.monotonic()
                requeue = None
                try:
                    requeue = await self.reconcile(worker, body, namespace, name,
                                                   _values(jobs, (namespace, name)), _values(pods, (namespace, name)))
                except Gone:
                    break
                except Exception as exc:  # one bad reconcile must not end the loop, nor any other recipe's
                    self.metrics.reconcile_errors.labels(namespace).inc()
                    message = redact(f"reconcile failed: {type(exc).__name__}: {api_message(exc)}")[:1000]
                    if worker.first_time(message):
                        logger.exception("%s", message)
                        self.report(body, planning.Event("Warning", "ReconcileFailed",
                                                         f"{message}; retrying every {self.config.resync_seconds:g}s"))
                finally:
                    self.metrics.reconcile_seconds.observe(time.monotonic() - began)
                timeout = self.config.resync_seconds if requeue is None else min(self.config.resync_seconds, requeue + 0.01)
                try:
                    await asyncio.wait_for(worker.wake.wait(), timeout)
                    if not stopped:
                        await asyncio.sleep(self.config.settle_seconds)
                except TimeoutError:
                    pass
        finally:
            relay_task.cancel()
            if self.workers.get((namespace, name)) is worker:
                del self.workers[(namespace, name)]
            if not _exiting(stopped):
                self.metrics.recipes.forget(namespace, name)

    async def reconcile(self, worker: Worker, body: Any, namespace: str, name: str,
                        jobs: list[JobObs], pods: list[PodObs]) -> float | None:
        spec = plain(body.get("spec"))
        key = _spec_key(spec)
        meta = body.get("metadata") or {}
        uid = meta.get("uid")
        if worker.spec_key != key:
            worker.spec_key, worker.parsed = key, planning.parse(name, namespace, spec, self.config.defaults)
        current = worker.status if worker.status is not None else plain(body.get("status") or {})
        if unseen := self.unseen_creations(worker, jobs):
            return unseen
        now = self.config.clock()
        sweep = not worker.services_swept and uid is not None and isinstance(worker.parsed, planning.Parsed)
        services = await self.own_services(namespace, name, uid) if sweep and uid is not None else None

        def make_plan() -> planning.Plan:
            return planning.plan(planning.Inputs(
                name=name, namespace=namespace, uid=uid, generation=meta.get("generation"),
                parsed=worker.parsed, status=current, jobs=jobs, pods=pods, facts=worker.facts, now=now,
                options=self.config.options, conflicts=self.conflicts(worker), services=services,
                retry=(meta.get("annotations") or {}).get(ANNOTATION_RETRY)))

        result = make_plan()
        for _ in range(2):  # answer its store questions, plan again
            if not result.reads:
                break
            await self.answer(worker, body, result.reads, now)
            result = make_plan()
        for warning in result.warnings:
            if worker.first_time(warning):
                self.log.warning("%s/%s: %s", namespace, name, warning)
        known = set(worker.conflicts)
        if not await self.apply(worker, body, namespace, uid, result):
            return self.config.options.backoff_seconds
        worker.services_swept = worker.services_swept or services is not None
        if set(worker.conflicts) - known:  # a name turned out to be another object's: say so, not "created"
            result = make_plan()
        if not isinstance(current, dict):
            current = {}
        mine = {k: v for k, v in current.items() if k in OWN_STATUS_KEYS}
        if clearing := clearing_patch(mine, result.status):
            # Garbage where a mapping belongs: null it first, so no server has to merge into a scalar.
            await self.kube.patch_status(namespace, name, clearing)
            mine = _without(mine, clearing)
        patch = merge_patch(mine, result.status)
        if patch:
            await self.kube.patch_status(namespace, name, patch)
        worker.status = {**{k: v for k, v in current.items() if k not in OWN_STATUS_KEYS}, **result.status}
        for event in result.events:
            self.post(body, event)
        self.metrics.recipes.record(namespace, name, result.status)
        return result.requeue_after

    async def own_services(self, namespace: str, name: str, uid: str) -> tuple[str, ...]:
        """The Services this recipe object controls (label and owner UID: never another's)."""
        found = await self.kube.list_services(namespace, f"{LABEL_RECIPE}={name}")
        return tuple(sorted(str(s["metadata"]["name"]) for s in found
                            if controller_of(s) == uid and (s["metadata"].get("labels") or {}).get(LABEL_RECIPE) == name))

    def unseen_creations(self, worker: Worker, jobs: list[JobObs]) -> float | None:
        """Seconds to wait for the index to show the Jobs this worker just created, or None to plan now."""
        seen, now = {job.name for job in jobs}, time.monotonic()
        for job_name, when in list(worker.created.items()):
            if job_name in seen or now - when >= CREATED_WAIT_SECONDS:
                del worker.created[job_name]
        return 0.2 if worker.created else None

    def conflicts(self, worker: Worker) -> dict[str, str]:
        """Names known to belong to other objects, until it is time to try them again."""
        now = time.monotonic()
        for name, (_, seen) in list(worker.conflicts.items()):
            if now - seen >= self.config.conflict_seconds:
                del worker.conflicts[name]
        return {name: why for name, (why, _) in worker.conflicts.items()}

    async def answer(self, worker: Worker, body: Any, reads: Iterable[planning.Read], now: datetime) -> None:
        """Answer the plan's store questions on the store threads, all of them within store_read_seconds."""
        loop = asyncio.get_running_loop()
        reads = list(reads)
        futures = [loop.run_in_executor(self.store_pool, self.reader.read, r, now) for r in reads]
        done, pending = await asyncio.wait(futures, timeout=self.config.store_read_seconds)
        for future in pending:
            future.cancel()  # a read still queued does not start; one in flight ends with its client timeouts
        for read, future in zip(reads, futures, strict=True):
            if future in done and not future.cancelled() and future.exception() is None:
                found: Fact = future.result()
            else:
                found = Fact(read.key, None, now, f"timed out after {self.config.store_read_seconds:g}s")
            if found.error:
                found = Fact(found.key, found.value, found.at, redact(found.error)[:500])
                message = f"store read {read.kind} of {read.stage} failed: {found.error}"
                if worker.first_time(message):
                    self.log.warning("%s", message)
                    self.report(body, planning.Event("Warning", "StoreReadFailed", f"{read.stage}: {message}"))
            worker.facts[(read.kind, read.stage)] = found

    async def apply(self, worker: Worker, body: Any, namespace: str, uid: str | None, result: planning.Plan) -> bool:
        """Create, suspend, resume, delete. False (and a warning event) if the API refused something.

        A create answered 409 is fine only when this recipe controls the object (a restarted
        operator, a lost watch event); otherwise the name is recorded as a conflict, which the next
        plan reports on the stage, and nothing else of that attempt is created."""
        try:
            for objects in result.create:
                for obj in objects:
                    if await self.kube.create(obj):
                        if obj["kind"] == "Job":
                            worker.created[obj["metadata"]["name"]] = time.monotonic()
                        continue
                    if uid is None:
                        continue
                    kind, name = obj["kind"], obj["metadata"]["name"]
                    owner = await self.kube.controller_uid(kind, namespace, name)
                    if owner is None or owner == uid:
                        continue  # gone again, or ours: as good as created
                    why = (f"{kind} {name} already exists and belongs to another object "
                           f"({'controller uid ' + owner if owner else 'no owner'}); it is not adopted - "
                           "delete it, or rename the recipe or stage")
                    worker.conflicts[name] = (why, time.monotonic())
                    if worker.first_time(why):
                        self.report(body, planning.Event("Warning", "NameConflict", why))
                    break
            if result.workloads:  # before the Jobs: an inactive Workload is one Kueue will not unsuspend
                await self.kube.set_workloads_active(namespace, dict(result.workloads))
            for job, suspend in result.suspend:
                await self.kube.suspend_job(namespace, job, suspend)
            for kind, name in result.delete:
                await self.kube.delete(kind, namespace, name)
        except Exception as exc:  # reported on the recipe, retried on the next tick
            status = getattr(exc, "status", None)
            if status is None or status >= 500 or status == 429:
                raise  # transient: the loop logs it and tries again
            message = f"the API refused a change: {api_message(exc)}"
            if worker.first_time(message):
                self.post(body, planning.Event("Warning", "ApplyFailed", message[:1000]))
            return False
        return True

    def post(self, body: Any, event: planning.Event) -> None:
        import kopf

        message = redact(event.message)[:1000]
        kopf.event(body, type=event.type, reason=event.reason, message=message)
        if self.config.notifier is not None:  # queued only: delivery never holds the reconcile
            meta = body.get("metadata") or {}
            notify = plain((body.get("spec") or {}).get("notify"))
            self.config.notifier.notify(str(meta.get("namespace")), str(meta.get("name")), notify,
                                        planning.Event(event.type, event.reason, message))

    def report(self, body: Any, event: planning.Event) -> None:
        """post(), for reports from inside error handling: a failure to post is only logged."""
        try:
            self.post(body, event)
        except Exception as exc:  # noqa: BLE001 - the event is best effort
            self.log.warning("could not post event %s: %s", event.reason, exc)


def clearing_patch(old: Any, new: Any, depth: int = 0) -> dict[str, Any] | None:
    """A merge patch nulling every value of `old` that `new` replaces with a mapping while it is not
    one itself (RFC 7386 allows merging a mapping into a scalar; not every server does)."""
    if not isinstance(old, dict) or not isinstance(new, dict) or depth > 32:
        return None
    patch: dict[str, Any] = {}
    for key, value in new.items():
        if key not in old or not isinstance(value, dict):
            continue
        if not isinstance(old[key], dict):
            patch[key] = None
        elif inner := clearing_patch(old[key], value, depth + 1):
            patch[key] = inner
    return patch or None


def _without(old: dict[str, Any], clearing: dict[str, Any]) -> dict[str, Any]:
    result = dict(old)
    for key, value in clearing.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _without(result[key], value)
    return result


def _spec_key(spec: Any) -> str:
    try:
        return json.dumps(spec, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        return f"unhashable:{id(spec)}"  # parsed again next time; validation says what is wrong


def _values(index: Any, key: tuple[str, str]) -> list[Any]:
    store = index.get(key) if index is not None else None
    return [v for v in store if v is not None] if store else []


def _exiting(stopped: Any) -> bool:
    import kopf

    reason = getattr(stopped, "reason", None)
    exiting = kopf.DaemonStoppingReason.OPERATOR_EXITING | kopf.DaemonStoppingReason.OPERATOR_PAUSING
    return bool(reason is not None and reason & exiting)
