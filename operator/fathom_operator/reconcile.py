"""One reconcile of one recipe: observe, plan, apply. And the per-recipe loop that runs it.

Each recipe has one worker loop (a kopf daemon), so a recipe is never reconciled twice at once.
It runs on start (create, or operator restart = resume), whenever the spec, one of its Jobs or one
of its Pods changes (a poke), and on a timer (`resync_seconds`; costs of running pods are at most
that stale). A reconcile:

1. reads the Jobs and Pods of the recipe from kopf's indexes (filled before any worker starts, so a
   restarted operator sees everything it created before it decides anything);
2. calls `plan.plan()`, answering its store questions on a thread and planning again;
3. creates Jobs and Services (409 = already there), suspends, resumes, deletes;
4. patches the status with the difference only, and only if there is one;
5. posts the plan's events.

The status the worker last wrote is remembered: it is the only writer of the status, so it never
re-derives anything from a status echo that has not arrived yet.
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

from . import plan as planning
from .api.status import RecipeStatus
from .kube import Gone, Kube, api_message, load_configuration, merge_patch
from .metrics import OperatorMetrics
from .observe import JobObs, PodObs
from .store_reader import Fact, Opener, StoreReader

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
    metrics: OperatorMetrics | None = None
    finalizer: str = "fathom.dev/operator"

    @classmethod
    def from_env(cls, **overrides: Any) -> OperatorConfig:
        """FATHOM_RESYNC_SECONDS and FATHOM_RETRY_BACKOFF_SECONDS tune the timers (tests, demos)."""
        options = planning.Options(backoff_seconds=float(os.environ.get("FATHOM_RETRY_BACKOFF_SECONDS", 30)))
        return cls(resync_seconds=float(os.environ.get("FATHOM_RESYNC_SECONDS", 30)), options=options, **overrides)


def plain(value: Any) -> Any:
    """kopf's body views -> plain dicts and lists (for hashing, pydantic and JSON)."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


@dataclass
class Worker:
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    facts: dict[tuple[str, str], Fact] = field(default_factory=dict)
    spec_key: str | None = None
    parsed: Any = None
    status: dict[str, Any] | None = None
    warned: set[str] = field(default_factory=set)


class Runtime:
    """Everything one operator process shares: API client, store reader, workers, metrics."""

    def __init__(self, config: OperatorConfig, kube: Kube | None = None) -> None:
        self.config = config
        self.kube = kube or Kube(load_configuration(config.kubeconfig), config.api_threads)
        self.reader = StoreReader(config.store_opener)
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
                except Exception as exc:  # one bad reconcile must not end the loop
                    self.metrics.reconcile_errors.labels(namespace).inc()
                    logger.exception("reconcile failed: %s", api_message(exc))
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
        if worker.spec_key != key:
            worker.spec_key, worker.parsed = key, planning.parse(name, namespace, spec, self.config.defaults)
        current = worker.status if worker.status is not None else plain(body.get("status") or {})
        meta = body.get("metadata") or {}
        now = self.config.clock()
        result = None
        for _ in range(3):  # plan, answer its store questions, plan again
            result = planning.plan(planning.Inputs(
                name=name, namespace=namespace, uid=meta.get("uid"), generation=meta.get("generation"),
                parsed=worker.parsed, status=current, jobs=jobs, pods=pods, facts=worker.facts, now=now,
                options=self.config.options))
            if not result.reads:
                break
            await self.answer(worker, result.reads, now)
        assert result is not None
        if not await self.apply(worker, body, namespace, result):
            return self.config.options.backoff_seconds
        mine = {k: v for k, v in current.items() if k in OWN_STATUS_KEYS}
        patch = merge_patch(mine, result.status)
        if patch:
            await self.kube.patch_status(namespace, name, patch)
        worker.status = {**{k: v for k, v in current.items() if k not in OWN_STATUS_KEYS}, **result.status}
        for event in result.events:
            self.post(body, event)
        self.metrics.recipes.record(namespace, name, result.status)
        return result.requeue_after

    async def answer(self, worker: Worker, reads: Iterable[planning.Read], now: datetime) -> None:
        loop = asyncio.get_running_loop()
        reads = list(reads)
        facts = await asyncio.gather(*(loop.run_in_executor(self.store_pool, self.reader.read, r, now) for r in reads))
        for read, found in zip(reads, facts, strict=True):
            if found.error and found.error not in worker.warned:
                worker.warned.add(found.error)
                self.log.warning("store read %s of %s failed: %s", read.kind, read.stage, found.error)
            worker.facts[(read.kind, read.stage)] = found

    async def apply(self, worker: Worker, body: Any, namespace: str, result: planning.Plan) -> bool:
        """Create, suspend, resume, delete. False (and a warning event) if the API refused something."""
        try:
            for objects in result.create:
                for obj in objects:
                    await self.kube.create(obj)
            for job, suspend in result.suspend:
                await self.kube.suspend_job(namespace, job, suspend)
            for kind, name in result.delete:
                await self.kube.delete(kind, namespace, name)
        except Exception as exc:  # reported on the recipe, retried on the next tick
            status = getattr(exc, "status", None)
            if status is None or status >= 500 or status == 429:
                raise  # transient: the loop logs it and tries again
            message = f"the API refused a change: {api_message(exc)}"
            if message not in worker.warned:
                worker.warned.add(message)
                self.post(body, planning.Event("Warning", "ApplyFailed", message[:1000]))
            return False
        return True

    def post(self, body: Any, event: planning.Event) -> None:
        import kopf

        kopf.event(body, type=event.type, reason=event.reason, message=event.message)


def _spec_key(spec: Any) -> str:
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def _values(index: Any, key: tuple[str, str]) -> list[Any]:
    store = index.get(key) if index is not None else None
    return [v for v in store if v is not None] if store else []


def _exiting(stopped: Any) -> bool:
    import kopf

    reason = getattr(stopped, "reason", None)
    exiting = kopf.DaemonStoppingReason.OPERATOR_EXITING | kopf.DaemonStoppingReason.OPERATOR_PAUSING
    return bool(reason is not None and reason & exiting)
