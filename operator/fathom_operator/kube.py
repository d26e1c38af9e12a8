"""The few Kubernetes API calls the operator makes, async, over the official client.

One set of credentials for kopf's watches and for these calls: `load_configuration()` (in-cluster
ServiceAccount, else $KUBECONFIG / ~/.kube/config read at call time) feeds both kopf's login handler
(`connection_info`) and `Kube`. The client is synchronous, so calls run on a small thread pool of
their own; responses are not deserialized into models (`_preload_content=False`): the operator
never reads them back, it learns everything from its watches.
"""

from __future__ import annotations

import asyncio
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .api.recipe import GROUP, PLURAL, VERSION

MERGE_PATCH = "application/merge-patch+json"
# Kueue's Workload API: v1beta1 (served by every release with spec.active), else v1beta2 (newer releases).
KUEUE_GROUP, KUEUE_VERSIONS, WORKLOADS = "kueue.x-k8s.io", ("v1beta1", "v1beta2"), "workloads"


class Gone(Exception):
    """The recipe is gone (404 on its status): stop reconciling it."""


def load_configuration(kubeconfig: str | None = None) -> Any:
    import kubernetes

    configuration = kubernetes.client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        kubernetes.config.load_incluster_config(client_configuration=configuration)
        return configuration
    path = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
    kubernetes.config.load_kube_config(config_file=path, client_configuration=configuration)
    return configuration


def connection_info(configuration: Any) -> Any:
    """kopf's credentials from the same configuration (what kopf.login_via_client does)."""
    import kopf

    header = (configuration.get_api_key_with_prefix("BearerToken")
              or configuration.get_api_key_with_prefix("authorization"))
    parts = header.split(" ", 1) if header else []
    scheme, token = (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme,
        token=token,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


def api_message(exc: Exception) -> str:
    """The API server's own message from an ApiException body, else the exception text."""
    body = getattr(exc, "body", None)
    try:
        return json.loads(body)["message"] if body else str(exc)
    except (ValueError, KeyError, TypeError):
        return str(exc)


class Kube:
    def __init__(self, configuration: Any, threads: int = 8) -> None:
        import kubernetes

        configuration.connection_pool_maxsize = max(threads, configuration.connection_pool_maxsize or 0)
        self._client = kubernetes.client.ApiClient(configuration)
        self._batch = kubernetes.client.BatchV1Api(self._client)
        self._core = kubernetes.client.CoreV1Api(self._client)
        self._custom = kubernetes.client.CustomObjectsApi(self._client)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="kube")
        self._error = kubernetes.client.ApiException

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        response = await loop.run_in_executor(self._pool, lambda: fn(*args, _preload_content=False, **kwargs))
        _ = response.data  # drain, so the connection goes back to the pool
        return response

    async def create(self, obj: dict[str, Any]) -> bool:
        """Create a Job or Service; False if it already exists (a restarted operator, a lost watch event)."""
        namespace = obj["metadata"]["namespace"]
        fn = self._batch.create_namespaced_job if obj["kind"] == "Job" else self._core.create_namespaced_service
        try:
            await self._call(fn, namespace, obj)
        except self._error as exc:
            if exc.status == 409:
                return False
            raise
        return True

    async def controller_uid(self, kind: str, namespace: str, name: str) -> str | None:
        """The UID of the object's controlling owner ('' when it has none); None when it does not exist."""
        fn = self._batch.read_namespaced_job if kind == "Job" else self._core.read_namespaced_service
        try:
            response = await self._call(fn, name, namespace)
        except self._error as exc:
            if exc.status == 404:
                return None
            raise
        return controller_of(json.loads(response.data))

    async def suspend_job(self, namespace: str, name: str, suspend: bool) -> None:
        await self._call(self._batch.patch_namespaced_job, name, namespace, {"spec": {"suspend": suspend}},
                         _content_type=MERGE_PATCH)

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        fn = self._batch.delete_namespaced_job if kind == "Job" else self._core.delete_namespaced_service
        try:
            # Background propagation: the Job's pods go too, without holding the call.
            await self._call(fn, name, namespace, propagation_policy="Background")
        except self._error as exc:
            if exc.status != 404:
                raise

    async def list_services(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        response = await self._call(self._core.list_namespaced_service, namespace, label_selector=label_selector)
        items = json.loads(response.data).get("items")
        return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []

    async def set_workloads_active(self, namespace: str, jobs: dict[str, bool]) -> int | None:
        """Set spec.active on the Kueue Workloads owned by these Jobs (job name -> active). Kueue
        names them `job-<name>-<hash>` and copies no labels by default, so they are found by owner
        reference. The number patched; None when the cluster has no Workload API (no Kueue: a 404)."""
        for version in KUEUE_VERSIONS:
            try:
                response = await self._call(self._custom.list_namespaced_custom_object, KUEUE_GROUP, version,
                                            namespace, WORKLOADS)
            except self._error as exc:
                if exc.status == 404:
                    continue
                raise
            patched = 0
            for item in json.loads(response.data).get("items") or []:
                job = owner_job(item)
                spec = item.get("spec") if isinstance(item.get("spec"), dict) else {}
                if job not in jobs or spec.get("active", True) is jobs[job]:
                    continue
                try:
                    await self._call(self._custom.patch_namespaced_custom_object, KUEUE_GROUP, version, namespace,
                                     WORKLOADS, item["metadata"]["name"], {"spec": {"active": jobs[job]}},
                                     _content_type=MERGE_PATCH)
                except self._error as exc:
                    if exc.status != 404:  # deleted with its Job meanwhile
                        raise
                    continue
                patched += 1
            return patched
        return None

    async def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        try:
            await self._call(self._custom.patch_namespaced_custom_object_status, GROUP, VERSION, namespace, PLURAL,
                             name, {"status": patch}, _content_type=MERGE_PATCH)
        except self._error as exc:
            if exc.status == 404:
                raise Gone(f"{namespace}/{name}") from None
            raise

    def get_recipe(self, namespace: str, name: str) -> dict[str, Any] | None:
        """Synchronous read for the CLI (`fathom cost`)."""
        try:
            response = self._custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                                                 _preload_content=False)
        except self._error as exc:
            if exc.status == 404:
                return None
            raise
        found: dict[str, Any] | None = json.loads(response.data)
        return found

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()


def controller_of(obj: Any) -> str:
    """The UID of an object's controller (ownerReferences with controller: true), '' when none."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    for ref in (meta or {}).get("ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("controller"):
            return str(ref.get("uid") or "")
    return ""


def owner_job(obj: Any) -> str | None:
    """The name of the batch/v1 Job among an object's owners, if any."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    for ref in (meta or {}).get("ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("kind") == "Job" and str(ref.get("apiVersion")).startswith("batch/"):
            name = ref.get("name")
            return name if isinstance(name, str) else None
    return None


def merge_patch(old: Any, new: Any) -> dict[str, Any] | None:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`, or None when they are equal."""
    if old == new:
        return None
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new  # type: ignore[no-any-return]  # RFC 7386: a non-object replaces the whole value
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            sub = merge_patch(old[key], value) if isinstance(old[key], dict) and isinstance(value, dict) else value
            patch[key] = sub
    return patch or None
