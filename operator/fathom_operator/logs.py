"""`fathom logs RECIPE [STAGE] [--attempt N] [-f]`: the pod logs of one attempt of a stage.

Every pod of the attempt (sharded and multi-node stages have several), each line prefixed with the
pod's index (`[0] ...`). Pods are found by the labels render puts on them (recipe, stage, attempt);
once they are gone (TTL, deletion, a finished recipe's cleanup) the log each pod uploaded to the
store at exit is shown instead (`fathom_jobs.joblog`). Defaults: STAGE = the first running stage,
else the first failed one, else the last one that ran; the attempt = the stage's latest.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, TextIO

from .render import LABEL_ATTEMPT, LABEL_RECIPE, LABEL_STAGE

INDEX_KEY = "batch.kubernetes.io/job-completion-index"  # label and annotation of Indexed Job pods
ACTIVE = ("Running", "Waiting", "Suspended")


class PodSource(Protocol):
    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]: ...
    def lines(self, namespace: str, pod: str, follow: bool) -> Iterable[str]: ...


class KubePods:
    """PodSource over the Kubernetes client (raw JSON: no model deserialization)."""

    def __init__(self, api_client: Any) -> None:
        import kubernetes

        self.core = kubernetes.client.CoreV1Api(api_client)

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        response = self.core.list_namespaced_pod(namespace, label_selector=selector, _preload_content=False)
        items = json.loads(response.data).get("items")
        return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []

    def lines(self, namespace: str, pod: str, follow: bool) -> Iterable[str]:
        response = self.core.read_namespaced_pod_log(pod, namespace, follow=follow, _preload_content=False)
        pending = b""
        for chunk in response.stream(4096):  # as it arrives (-f), one line at a time
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for line in complete:
                yield line.decode("utf-8", "replace")
        if pending:
            yield pending.decode("utf-8", "replace")


def choose_stage(order: list[str], status: Mapping[str, Any]) -> str | None:
    """The first running stage, else the first failed one, else the last one that ran."""
    stages = status.get("stages") or {}

    def phase(name: str) -> str:
        return str((stages.get(name) or {}).get("phase") or "Pending")

    for wanted in (ACTIVE, ("Failed",)):
        found = [n for n in order if phase(n) in wanted]
        if found:
            return found[0]
    ran = [n for n in order if (stages.get(n) or {}).get("job")]
    return ran[-1] if ran else None


def latest_attempt(stage_status: Mapping[str, Any]) -> int | None:
    """The current (or last) attempt of a stage, from its Job name (`...-<attempt>`) or its history."""
    job = stage_status.get("job")
    number = job.rsplit("-", 1)[-1] if isinstance(job, str) else ""
    if number.isdigit():
        return int(number)
    attempts = [r.get("attempt") for r in stage_status.get("history") or [] if isinstance(r, dict)]
    numbers = [a for a in attempts if isinstance(a, int)]
    return max(numbers) if numbers else None


def pod_count(stage: Mapping[str, Any]) -> int:
    nodes, shards = stage.get("nodes") or 1, stage.get("shards") or 1
    return int(nodes if nodes > 1 else shards)


def indexed(pods: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """(pod index, pod name), by index; a pod without an index label counts by name order."""
    found = []
    for position, pod in enumerate(sorted(pods, key=lambda p: p.get("metadata", {}).get("name", ""))):
        meta = pod.get("metadata") or {}
        raw = str((meta.get("labels") or {}).get(INDEX_KEY) or (meta.get("annotations") or {}).get(INDEX_KEY) or "")
        found.append((int(raw) if raw.isdigit() else position, str(meta.get("name"))))
    return sorted(found)


def from_pods(source: PodSource, namespace: str, pods: list[tuple[int, str]], follow: bool, out: TextIO) -> None:
    if not follow or len(pods) == 1:
        for index, pod in pods:
            for line in source.lines(namespace, pod, follow):
                out.write(f"[{index}] {line}\n")
                out.flush()
        return
    lock = threading.Lock()

    def stream(index: int, pod: str) -> None:
        for line in source.lines(namespace, pod, follow):
            with lock:
                out.write(f"[{index}] {line}\n")
                out.flush()

    threads = [threading.Thread(target=stream, args=p, daemon=True) for p in pods]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def from_store(opener: Callable[[str], Any], output: str, attempt: int, count: int, out: TextIO) -> int:
    """The logs the pods uploaded at exit; the number found."""
    from fathom_jobs.joblog import read_log

    found = 0
    for index in range(count):
        text = read_log(opener, output, attempt, index)
        if text is None:
            continue
        found += 1
        for line in text.splitlines():
            out.write(f"[{index}] {line}\n")
    return found


def show(recipe: Mapping[str, Any], stage: str | None, attempt: int | None, follow: bool, source: PodSource,
         opener: Callable[[str], Any], out: TextIO) -> str | None:
    """Print the logs; None, or what went wrong (one line)."""
    meta, spec, status = recipe.get("metadata") or {}, recipe.get("spec") or {}, recipe.get("status") or {}
    name, namespace = str(meta.get("name")), str(meta.get("namespace"))
    specs = {s.get("name"): s for s in spec.get("stages") or [] if isinstance(s, dict)}
    order = [str(n) for n in specs]
    stage = stage or choose_stage(order, status)
    if stage is None:
        return f"{name}: no stage has run yet"
    if stage not in specs:
        return f"{name} has no stage {stage!r}; its stages: {', '.join(order)}"
    stage_status = (status.get("stages") or {}).get(stage) or {}
    attempt = attempt if attempt is not None else latest_attempt(stage_status)
    if attempt is None:
        return f"{stage} has not started an attempt yet ({stage_status.get('phase') or 'Pending'})"
    want = {LABEL_RECIPE: name, LABEL_STAGE: stage, LABEL_ATTEMPT: str(attempt)}
    found = source.pods(namespace, ",".join(f"{k}={v}" for k, v in want.items()))
    # Checked again here: the selector is the server's to apply, and the labels are what identify an attempt.
    pods = indexed([p for p in found if want.items() <= ((p.get("metadata") or {}).get("labels") or {}).items()])
    if pods:
        from_pods(source, namespace, pods, follow, out)
        return None
    storage = spec.get("storage") or {}
    output = stage_status.get("output") or (
        f"{str(storage['uri']).rstrip('/')}/{namespace}/{name}/{stage}/" if storage.get("uri") else None)
    if output is None:
        return (f"{stage} attempt {attempt}: its pods are gone and the store is the operator's default "
                "(spec.storage is not set): read it with --store")
    if not from_store(opener, output, attempt, pod_count(specs[stage]), out):
        return f"{stage} attempt {attempt}: its pods are gone and no log is in the store under {output}_logs/"
    return None


def add_logs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="The FathomRecipe.")
    parser.add_argument("stage", nargs="?", help="Default: the first running stage, else the first failed one.")
    parser.add_argument("--attempt", type=int, help="Default: the stage's latest attempt.")
    parser.add_argument("-f", "--follow", action="store_true", help="Keep streaming while the pods run.")
    parser.add_argument("--store", metavar="URI", help="The stage's output URI, when spec.storage is the operator's default.")
    parser.add_argument("-n", "--namespace", help="Its namespace (default: the current context's).")
    parser.add_argument("--kubeconfig", help="Kubeconfig file (default: in-cluster, else $KUBECONFIG or ~/.kube/config).")


def cmd_logs(args: argparse.Namespace) -> int:
    import kubernetes

    from fathom_jobs.redact import redact

    from .api.recipe import GROUP, PLURAL, VERSION
    from .kube import api_message
    from .runner import _configuration, _fail, current_namespace

    namespace = args.namespace or current_namespace(args.kubeconfig)
    with kubernetes.client.ApiClient(_configuration(args.kubeconfig)) as client:
        try:
            recipe = kubernetes.client.CustomObjectsApi(client).get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, args.name)
        except Exception as exc:  # API errors in one line
            if getattr(exc, "status", None) == 404:
                return _fail(f"no FathomRecipe {args.name!r} in namespace {namespace!r}")
            return _fail(f"cannot read FathomRecipe {namespace}/{args.name}: {api_message(exc)}")
        if args.store and args.stage:
            recipe.setdefault("status", {}).setdefault("stages", {}).setdefault(args.stage, {})["output"] = args.store
        storage = (recipe.get("spec") or {}).get("storage") or {}

        def opener(uri: str) -> Any:
            from fathom_jobs.inputs import resolve_file_uri
            from fathom_jobs.store import open_store

            return open_store(resolve_file_uri(uri), endpoint=storage.get("endpoint"), region=storage.get("region"),
                              path_style=storage.get("pathStyle"))

        try:
            problem = show(recipe, args.stage, args.attempt, args.follow, KubePods(client), opener, sys.stdout)
        except KeyboardInterrupt:
            return 0
        except Exception as exc:  # the API and store clients raise many types: one line
            return _fail(redact(f"logs of {args.name}: {type(exc).__name__}: {api_message(exc)}")[:1000])
    return _fail(problem) if problem else 0
