"""Running the real operator (kopf + handlers) against kmock, and playing the Job controller.

kmock stores objects and serves list/watch/patch, but it is not an API server: `Cluster` adds what
kopf and the operator rely on (uid, resourceVersion, generation, creationTimestamp, generateName)
and nothing else. There is no Job controller: tests move Jobs and Pods along themselves with
`JobController`, at scripted times, so costs are exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import sys
import threading
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonpatch
import kmock
import kopf
import yaml

from fathom_operator import handlers  # noqa: F401 - registers the handlers
from fathom_operator.api.recipe import API_VERSION, KIND
from fathom_operator.plan import Options
from fathom_operator.reconcile import OperatorConfig

from .helpers import example

RECIPES = "fathom.dev/v1alpha1/fathomrecipes"
JOBS = "batch/v1/jobs"
PODS = "v1/pods"
SERVICES = "v1/services"
EVENTS = "v1/events"
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def ts(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


class Cluster(kmock.KubernetesEmulator):
    """kmock plus the metadata bookkeeping of a real API server, and fast enough for 500 recipes.

    kmock keeps every request and matches each new one against that whole log, and scans every
    object on every read: quadratic, minutes at benchmark scale. Here the log holds only the
    requests in flight (tests read `calls` and the stored objects instead), and single objects are
    looked up by key.
    """

    _counter = itertools.count(1)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.calls: list[tuple[str, str, str | None, str | None, str | None]] = []  # method, plural, sub, ns, name
        self.faults: list[Callable[[kmock.Request], bool]] = []  # requests answered with a 500

    async def _handle(self, request: kmock.Request) -> Any:
        try:
            return await self._handle_tracked(request)
        finally:
            for i, seen in enumerate(self._requests):
                if seen is request:
                    del self._requests[i]
                    break

    async def _handle_tracked(self, request: kmock.Request) -> Any:
        data = request.data
        if request.resource is not None:
            named = request.name or (data.get("metadata", {}).get("name") if isinstance(data, dict) else None)
            self.calls.append((str(request.method).rsplit(".", 1)[-1].upper(), request.resource.plural,
                               request.subresource, request.namespace, named))
            if any(fault(request) for fault in self.faults):
                raise kmock.KubernetesError(status=500, reason="InjectedFault", message="injected by the test")
        if request.resource is not None and request.action == kmock.action.CREATE and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = f"{meta['generateName']}{next(self._counter)}"
            meta.setdefault("namespace", request.namespace)
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", ts(datetime.now(UTC)))
            meta.setdefault("generation", 1)
            meta["resourceVersion"] = str(next(self._counter))
        elif request.resource is not None and request.action == kmock.action.UPDATE:
            version = str(next(self._counter))
            if isinstance(data, list):  # a JSON patch (kopf's finalizers)
                data.append({"op": "replace", "path": "/metadata/resourceVersion", "value": version})
            elif isinstance(data, dict):
                meta = data.setdefault("metadata", {})
                meta["resourceVersion"] = version
                current = self._objects._objects.get((request.resource, request.namespace, request.name))
                if "spec" in data and request.subresource is None and current is not None and not current.deleted:
                    meta["generation"] = int(current.get("metadata", {}).get("generation") or 1) + 1
        try:
            return await super()._handle(request)
        except jsonpatch.JsonPatchTestFailed as exc:
            # kopf guards its JSON patches with a resourceVersion test. The API server answers a failed
            # test with 422, on which kopf re-reads and retries; kmock's 500 made kopf resend the stale
            # patch until it gave up (a flaky hang in the tests, not an operator bug).
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) from None

    def _KubernetesEmulator__get_objs(self, request: kmock.Request, strict: bool) -> list[Any]:
        if request.name is not None and (strict or request.namespace is not None):
            found = self._objects._objects.get((request.resource, request.namespace, request.name))
            return [found] if found is not None else []
        return [obj for (resource, namespace, name), obj in self._objects._objects.items()
                if resource == request.resource and (request.namespace is None or namespace == request.namespace)
                and (request.name is None or name == request.name)]

    # kmock lists with a dummy resourceVersion and replays every object as ADDED when a watch
    # connects; a real API server continues from the list's version. Without this, kopf re-handles
    # stale copies of objects it has just patched.
    async def _serve_list(self, request: kmock.Request) -> Any:
        payload = await super()._serve_list(request)
        payload["metadata"]["resourceVersion"] = str(next(self._counter))
        return payload

    async def _serve_watch(self, request: kmock.Request) -> Any:
        since = str(request.params.get("resourceVersion") or "")
        async for event in super()._serve_watch(request):
            if isinstance(event, dict) and event.get("type") == "ADDED" and since.isdigit():
                version = str(event["object"].get("metadata", {}).get("resourceVersion") or "")
                if version.isdigit() and int(version) <= int(since):
                    continue
            yield event


def setup_cluster(cluster: Cluster) -> None:
    with warnings.catch_warnings():  # kmock 0.8 reads its bundle with a deprecated importlib call
        warnings.simplefilter("ignore", DeprecationWarning)
        cluster.resources.load_bundled()
    cluster.resources[RECIPES] = kmock.ResourceInfo(
        kind=KIND, singular="fathomrecipe", namespaced=True, shortnames={"frecipe"},
        verbs={"get", "list", "watch", "patch", "create", "delete"}, subresources={"status"})


def write_kubeconfig(path: Path, server: Any) -> str:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": str(server)}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
        "users": [{"name": "kmock", "user": {"token": "test"}}],
    }))
    return str(path)


def local_store(root: Path) -> Callable[..., Any]:
    """An `open_store` that keeps s3://bucket/... in root/bucket/... (no S3 in operator tests)."""
    from fathom_jobs.store import open_store

    def opener(uri: str, **_: Any) -> Any:
        bucket_path = uri.split("://", 1)[1]
        (root / bucket_path).mkdir(parents=True, exist_ok=True)
        return open_store(f"file://{root / bucket_path}")

    return opener


class Clock:
    """The operator's clock in tests: moves only when told to."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


def make_config(kubeconfig: str, clock: Callable[[], datetime], store_root: Path, **overrides: Any) -> OperatorConfig:
    options = overrides.pop("options", Options(backoff_seconds=60.0, progress_seconds=30.0))
    return OperatorConfig(resync_seconds=overrides.pop("resync_seconds", 0.3), settle_seconds=0.02, options=options,
                          kubeconfig=kubeconfig, clock=clock, api_threads=4, store_threads=2,
                          store_opener=local_store(store_root), **overrides)


class Operator:
    """The operator on a thread with its own event loop, like a separate process would be.

    (kopf cancels every task of its loop when it exits, kmock's included; and a thread keeps the
    operator's shutdown from waiting on the test's tasks.)
    """

    def __init__(self, config: OperatorConfig, namespaces: list[str] | None = None) -> None:
        self.config, self.namespaces = config, namespaces
        self.stop_flag: asyncio.Event | None = None  # in the operator's loop: no thread blocks on it
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="operator", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            settings = kopf.OperatorSettings()
            settings.scanning.disabled = True  # kmock answers 500 to namespace listing
            settings.watching.reconnect_backoff = 0.1
            self.loop = asyncio.get_running_loop()
            self.task = asyncio.current_task()
            self.stop_flag = asyncio.Event()
            await kopf.operator(
                registry=kopf.get_default_registry(), settings=settings, memo=kopf.Memo(config=self.config),
                standalone=True, clusterwide=not self.namespaces, namespaces=self.namespaces or (),
                stop_flag=self.stop_flag, ready_flag=self.ready)

        try:
            asyncio.run(main())
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    async def start(self) -> Operator:
        # Two busy threads share the GIL: hand it over often, or every kmock reply waits 5 ms per switch.
        self.switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(0.0005)
        self.thread.start()
        assert await asyncio.to_thread(self.ready.wait, 15), "the operator did not start"
        return self

    async def stop(self) -> None:
        assert self.loop is not None and self.stop_flag is not None
        self.loop.call_soon_threadsafe(self.stop_flag.set)
        await asyncio.to_thread(self.thread.join, 20)
        sys.setswitchinterval(self.switch_interval)
        assert not self.thread.is_alive(), "the operator did not stop"
        if self.error is not None:
            raise self.error

    async def kill(self) -> None:
        """SIGKILL, as far as a thread can have one: no graceful shutdown, in-memory state lost."""
        assert self.loop is not None and self.task is not None
        self.loop.call_soon_threadsafe(self.task.cancel)
        await asyncio.to_thread(self.thread.join, 20)
        sys.setswitchinterval(self.switch_interval)
        assert not self.thread.is_alive(), "the operator did not die"


@contextlib.asynccontextmanager
async def operator(config: OperatorConfig, namespaces: list[str] | None = None) -> AsyncIterator[Operator]:
    running = await Operator(config, namespaces).start()
    try:
        yield running
    finally:
        if running.thread.is_alive():
            await running.stop()


async def until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def recipe_doc(name: str = "fathom-r1-14b", namespace: str = "ml", example_file: str = "fathom-r1-14b.yaml",
               **spec: Any) -> dict[str, Any]:
    doc = example(example_file)
    doc["metadata"] = {"name": name, "namespace": namespace}
    doc["spec"].update(spec)
    doc["spec"]["cache"] = spec.get("cache", False)
    return doc


def small_recipe(name: str = "r", namespace: str = "ml", **spec: Any) -> dict[str, Any]:
    """Four stages, two of them on GPUs: corpus (CPU, $0.20/h), solve (2 pods x 8 GPUs, $32/h),
    chains (CPU), sft (8 GPUs, $16/h, one retry)."""
    doc = {
        "apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "baseModel": "hf://org/base", "storage": {"uri": "s3://runs"}, "cache": False,
            "nodePools": {"gpu": {"gpusPerNode": 8, "gpuHourUSD": 2.0}, "cpu": {"cpuHourUSD": 0.05}},
            "stages": [
                {"name": "corpus", "type": "prepare", "pool": "cpu", "sources": [{"uri": "aime24"}]},
                {"name": "solve", "type": "solve-rate", "data": "corpus", "pool": "gpu", "shards": 2},
                {"name": "chains", "type": "curate", "data": "solve", "preset": "curriculum", "pool": "cpu"},
                {"name": "sft", "type": "sft", "data": "chains", "pool": "gpu", "retries": 1},
            ],
        },
    }
    doc["spec"].update(spec)
    return doc


def stage_phase(cluster: Cluster, stage: str, namespace: str = "ml", name: str = "r") -> str | None:
    return (status(cluster, namespace, name).get("stages") or {}).get(stage, {}).get("phase")


async def apply(cluster: Cluster, doc: dict[str, Any]) -> None:
    meta = doc["metadata"]
    resp = await cluster.post(f"/apis/{API_VERSION}/namespaces/{meta['namespace']}/fathomrecipes", json=doc)
    assert resp.status in (200, 201), await resp.text()


async def patch_spec(cluster: Cluster, namespace: str, name: str, spec: dict[str, Any]) -> None:
    resp = await cluster.patch(f"/apis/{API_VERSION}/namespaces/{namespace}/fathomrecipes/{name}",
                               json={"spec": spec}, headers={"Content-Type": "application/merge-patch+json"})
    assert resp.status == 200, await resp.text()


def recipe(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return copy.deepcopy(dict(cluster._objects._objects[kmock.resource(RECIPES), namespace, name].raw))


def status(cluster: Cluster, namespace: str = "ml", name: str = "fathom-r1-14b") -> dict[str, Any]:
    return recipe(cluster, namespace, name).get("status") or {}


def live(cluster: Cluster, resource: str, namespace: str | None = None) -> dict[str, dict[str, Any]]:
    """name -> object, for the objects of a resource that exist now."""
    found = {}
    for (res, ns, name), obj in list(cluster._objects._objects.items()):
        if res == kmock.resource(resource) and not obj.deleted and (namespace is None or ns == namespace):
            found[name] = copy.deepcopy(dict(obj.raw))
    return found


def events(cluster: Cluster, namespace: str = "ml", name: str | None = None) -> list[tuple[str, str, str]]:
    """(type, reason, message) of the events about a recipe, in posting order."""
    posted = []
    for (res, ns, _), obj in list(cluster._objects._objects.items()):
        if res == kmock.resource(EVENTS) and ns == namespace and not obj.deleted:
            body = obj.raw
            if name is None or body.get("involvedObject", {}).get("name") == name:
                posted.append((body.get("type"), body.get("reason"), body.get("message")))
    return posted


def creates(cluster: Cluster, plural: str = "jobs") -> list[str]:
    """Names of the objects the operator asked to create, every attempt counted."""
    return [name for method, res, _, _, name in list(cluster.calls) if method == "POST" and res == plural]


def status_patches(cluster: Cluster, namespace: str | None = None) -> int:
    return sum(1 for method, plural, sub, ns, _ in list(cluster.calls)
               if (method, plural, sub) == ("PATCH", "fathomrecipes", "status") and namespace in (None, ns))


class JobController:
    """What the Job controller and kubelet would do to the operator's Jobs and Pods."""

    def __init__(self, cluster: Cluster, namespace: str = "ml") -> None:
        self.cluster = cluster
        self.namespace = namespace

    def jobs(self) -> dict[str, dict[str, Any]]:
        return live(self.cluster, JOBS, self.namespace)

    def job(self, name: str) -> dict[str, Any]:
        return self.jobs()[name]

    def pods(self, job: str) -> list[str]:
        spec = self.job(job)["spec"]
        return [f"{job}-{i}-pod" for i in range(int(spec.get("parallelism") or 1))]

    async def _patch(self, resource: str, name: str, body: dict[str, Any]) -> None:
        group_path = "/api/v1" if resource.startswith("v1/") else "/apis/batch/v1"
        plural = resource.rsplit("/", 1)[-1]
        resp = await self.cluster.patch(f"{group_path}/namespaces/{self.namespace}/{plural}/{name}", json=body,
                                        headers={"Content-Type": "application/merge-patch+json"})
        assert resp.status == 200, await resp.text()

    async def _create_pod(self, job: dict[str, Any], pod: str, at: datetime) -> None:
        template = job["spec"]["template"]
        body = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": self.namespace,
                             "labels": {**template["metadata"]["labels"], "job-name": job["metadata"]["name"]}},
                "spec": template["spec"],
                "status": {"phase": "Running", "startTime": ts(at)}}
        resp = await self.cluster.post(f"/api/v1/namespaces/{self.namespace}/pods", json=body)
        assert resp.status in (200, 201), await resp.text()

    async def start(self, job: str, at: datetime) -> None:
        """Pods scheduled and running from `at`."""
        body = self.job(job)
        for pod in self.pods(job):
            await self._create_pod(body, pod, at)
        await self._patch(JOBS, job, {"status": {"startTime": ts(at), "active": len(self.pods(job))}})

    async def succeed(self, job: str, at: datetime) -> None:
        for pod in self.pods(job):
            await self._patch(PODS, pod, {"status": {"phase": "Succeeded", "containerStatuses": [
                {"name": "stage", "state": {"terminated": {"exitCode": 0, "reason": "Completed", "finishedAt": ts(at)}}}]}})
        await self._patch(JOBS, job, {"status": {"active": 0, "succeeded": len(self.pods(job)), "completionTime": ts(at),
                                                 "conditions": [{"type": "Complete", "status": "True",
                                                                 "lastTransitionTime": ts(at)}]}})

    async def run(self, job: str, start: datetime, hours: float, clock: Clock | None = None) -> datetime:
        """Wait for the Job, run it for `hours` and succeed it; returns the end time."""
        await until(lambda: job in self.jobs(), what=f"Job {job}")
        await self.start(job, start)
        end = start + timedelta(hours=hours)
        if clock is not None:
            clock.now = end
        await self.succeed(job, end)
        return end

    async def fail(self, job: str, at: datetime, message: str = "Traceback: CUDA error", exit_code: int = 1) -> None:
        first, *rest = self.pods(job)
        await self._patch(PODS, first, {"status": {"phase": "Failed", "containerStatuses": [
            {"name": "stage", "state": {"terminated": {"exitCode": exit_code, "reason": "Error", "message": message,
                                                       "finishedAt": ts(at)}}}]}})
        for pod in rest:  # the Job controller kills the siblings of a failed pod
            await self._patch(PODS, pod, {"status": {"phase": "Failed", "containerStatuses": [
                {"name": "stage", "state": {"terminated": {"exitCode": 143, "reason": "Error", "finishedAt": ts(at)}}}]}})
        await self._fail_job(job, at, "BackoffLimitExceeded", "Job has reached the specified backoff limit")

    async def preempt(self, job: str, at: datetime, reason: str = "PreemptionByScheduler") -> None:
        for pod in self.pods(job):
            await self._patch(PODS, pod, {"status": {"phase": "Failed", "conditions": [
                {"type": "DisruptionTarget", "status": "True", "reason": reason, "lastTransitionTime": ts(at)}],
                "containerStatuses": [{"name": "stage", "state": {"terminated": {
                    "exitCode": 137, "reason": "Error", "finishedAt": ts(at)}}}]}})
        await self._fail_job(job, at, "BackoffLimitExceeded", "Job has reached the specified backoff limit")

    async def _fail_job(self, job: str, at: datetime, reason: str, message: str) -> None:
        await self._patch(JOBS, job, {"status": {"active": 0, "failed": 1, "conditions": [
            {"type": "Failed", "status": "True", "reason": reason, "message": message, "lastTransitionTime": ts(at)}]}})
