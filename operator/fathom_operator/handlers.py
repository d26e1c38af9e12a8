"""kopf glue: one small handler per concern. Importing this module registers them.

- login: the same credentials for kopf and for the operator's own API calls;
- startup/cleanup: settings and the shared Runtime (put in the operator's memo);
- a probe: kopf's liveness endpoint (`fathom operator --liveness-port`) reports the recipes handled;
- two indexes: the operator's Jobs and Pods (label `fathom.dev/recipe`), slimmed to observations;
  every change also wakes that recipe's worker (kopf calls indexers on every event, so a separate
  event handler per kind would only double the per-event work);
- one poke: a recipe's spec changed, or `fathom retry` annotated it -> wake its worker;
- one daemon per recipe: the worker loop (reconcile on start/resume, on pokes, on a timer).

The control logic is in `plan`; applying it is in `reconcile`.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import kopf

from . import observe, retry
from .api.recipe import GROUP, PLURAL, VERSION
from .kube import connection_info, load_configuration
from .reconcile import OperatorConfig, Runtime
from .render import LABEL_RECIPE

OURS = {LABEL_RECIPE: kopf.PRESENT}


@kopf.on.login()
def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    config = memo.get("config")
    info: kopf.ConnectionInfo = connection_info(load_configuration(config.kubeconfig if config else None))
    return info


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config: OperatorConfig = memo.get("config") or OperatorConfig.from_env()
    settings.persistence.finalizer = config.finalizer
    # Our own events are posted explicitly; kopf's per-handler log lines would drown them.
    settings.posting.level = logging.WARNING
    # Events say who posted them (kubectl describe's "From"): the operator, and which pod of it.
    settings.posting.reporting_component = "fathom-operator"
    settings.posting.reporting_instance = os.environ.get("POD_NAME") or socket.gethostname()
    # Server-side filtering: only the operator's own Jobs and Pods reach this process.
    settings.watching.label_selectors["batch", "jobs"] = LABEL_RECIPE
    settings.watching.label_selectors["pods"] = LABEL_RECIPE
    memo["fathom"] = Runtime(config)


@kopf.on.probe(id="recipes")
def recipes_probe(memo: kopf.Memo, **_: Any) -> int:
    """Shown by kopf's liveness endpoint (/healthz), which answers from the operator's own loop."""
    return len(memo["fathom"].workers) if "fathom" in memo else 0


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    if "fathom" in memo:
        memo["fathom"].close()


@kopf.index("batch", "v1", "jobs", labels=OURS)
async def fathom_jobs(*, body: kopf.Body, namespace: str | None, memo: Any, **_: Any) -> dict[Any, Any]:
    found = observe.observe_job(body)
    if found is None:
        return {}
    memo["fathom"].poke(namespace, found.recipe)
    return {(namespace, found.recipe): found}


@kopf.index("v1", "pods", labels=OURS)
async def fathom_pods(*, body: kopf.Body, namespace: str | None, memo: Any, **_: Any) -> dict[Any, Any]:
    found = observe.observe_pod(body)
    if found is None:
        return {}
    memo["fathom"].poke(namespace, found.recipe)
    return {(namespace, found.recipe): found}


@kopf.on.event(GROUP, VERSION, PLURAL)
async def recipe_changed(*, namespace: str | None, name: str | None, spec: kopf.Spec, meta: kopf.Meta,
                         status: kopf.Status, memo: Any, **_: Any) -> None:
    memo["fathom"].spec_changed(namespace, name, spec)
    if retry.pending(meta.get("annotations", {}).get(retry.ANNOTATION_RETRY), status.get("retried")):
        memo["fathom"].poke(namespace, name)  # `fathom retry`: the spec is unchanged, the worker must look


@kopf.daemon(GROUP, VERSION, PLURAL, id="reconcile", cancellation_timeout=10.0)
async def reconcile(*, body: kopf.Body, namespace: str | None, name: str | None, memo: Any,
                    stopped: kopf.DaemonStopped, logger: kopf.Logger, **indexes: Any) -> None:
    # The indexes above arrive as keyword arguments named after their handlers.
    await memo["fathom"].run_worker(body, namespace, name, stopped, indexes["fathom_jobs"], indexes["fathom_pods"],
                                    logger)
