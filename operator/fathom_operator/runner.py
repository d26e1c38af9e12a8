"""`fathom operator`, `fathom cost` and `fathom retry`: the cluster-facing commands (kopf and the client
load lazily)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from .cost import cost_table

SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
GLOB = set("*?[")
NOTIFICATIONS_DIR = "/etc/fathom-notifications"


def add_operator_arguments(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[],
                       help="Watch this namespace (repeatable; globs like 'team-*' need list access to namespaces). "
                            "Default: the namespace of the current context or of the operator's pod.")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="Watch every namespace.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--standalone", action="store_true",
                      help="Run without kopf peering (also the default without --peering; the Helm chart runs one replica).")
    mode.add_argument("--peering", metavar="NAME", help="Coordinate with other operator replicas via kopf peering NAME.")
    parser.add_argument("--metrics-port", type=int, default=0, help="Serve /metrics and /healthz on this port (0: off).")
    parser.add_argument("--liveness-port", type=int, default=0,
                        help="Serve kopf's liveness endpoint at /healthz on this port (0: off): it answers from the "
                             "operator's own event loop, only once startup is done; a stuck loop fails it.")
    parser.add_argument("--notifications-dir", default=os.environ.get("FATHOM_NOTIFICATIONS_DIR", NOTIFICATIONS_DIR),
                        help="Webhooks for spec.notify: <dir>/<name>/url, each from a Secret "
                             f"(default: $FATHOM_NOTIFICATIONS_DIR or {NOTIFICATIONS_DIR}).")
    parser.add_argument("--defaults", help="Operator defaults (storage, nodePools, images) as the Helm chart mounts them.")
    parser.add_argument("--resync-seconds", type=float, default=None,
                        help="Reconcile every recipe at least this often; running costs are at most this stale "
                             "(default 30, or $FATHOM_RESYNC_SECONDS).")
    parser.add_argument("--kubeconfig", help="Kubeconfig file (default: in-cluster, else $KUBECONFIG or ~/.kube/config).")
    parser.add_argument("-v", "--verbose", action="store_true", help="Log every reconcile.")


def add_cost_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="The FathomRecipe.")
    parser.add_argument("-n", "--namespace", help="Its namespace (default: the current context's).")
    parser.add_argument("--kubeconfig", help="Kubeconfig file (default: in-cluster, else $KUBECONFIG or ~/.kube/config).")


def _fail(message: str) -> int:
    print(f"fathom: {message}", file=sys.stderr)
    return 1


def _configuration(kubeconfig: str | None) -> Any:
    from .kube import load_configuration

    try:
        return load_configuration(kubeconfig)
    except Exception as exc:  # ConfigException, missing file, bad YAML: one line, no traceback
        raise SystemExit(_fail(f"cannot load Kubernetes credentials: {exc}")) from None


def current_namespace(kubeconfig: str | None) -> str:
    if os.path.exists(SERVICE_ACCOUNT_NAMESPACE) and kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        with open(SERVICE_ACCOUNT_NAMESPACE) as handle:
            return handle.read().strip() or "default"
    try:
        import kubernetes

        path = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        _, active = kubernetes.config.list_kube_config_contexts(config_file=path)
        return (active or {}).get("context", {}).get("namespace") or "default"
    except Exception:  # no context namespace: Kubernetes' own default
        return "default"


def cmd_operator(args: argparse.Namespace) -> int:
    from .hardware import parse_calibration
    from .policy import policy_from_defaults
    from .validate import read_defaults

    try:
        defaults = read_defaults(args.defaults)
        if defaults and defaults.get("calibration"):  # a bad calibration stops the operator, not each recipe
            parse_calibration(defaults["calibration"], "defaults.calibration")
        policy_from_defaults(defaults)  # so does a malformed policy
    except ValueError as exc:
        return _fail(str(exc))
    _configuration(args.kubeconfig)  # fail fast, and clearly, without credentials
    import kopf

    from . import handlers  # noqa: F401 - registers the handlers
    from .metrics import OperatorMetrics
    from .notify import Notifier, load_webhooks
    from .reconcile import OperatorConfig

    metrics = OperatorMetrics()
    webhooks = load_webhooks(args.notifications_dir)
    notifier = Notifier(webhooks, on_result=lambda hook, result: metrics.notifications.labels(hook, result).inc()) \
        if webhooks else None
    config = OperatorConfig.from_env(defaults=defaults, kubeconfig=args.kubeconfig, metrics=metrics, notifier=notifier)
    if args.resync_seconds is not None:
        if args.resync_seconds <= 0:
            return _fail("--resync-seconds must be above 0")
        config.resync_seconds = args.resync_seconds
    namespaces = [] if args.all_namespaces else (args.namespace or [current_namespace(args.kubeconfig)])
    settings = kopf.OperatorSettings()
    # Exact namespace names need no namespace listing (and no cluster-wide RBAC for it).
    settings.scanning.disabled = bool(namespaces) and not any(GLOB & set(ns) for ns in namespaces)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # kopf logs every handler call on every pod event at INFO
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if args.metrics_port and config.metrics is not None:
        config.metrics.serve(args.metrics_port)
    where = "all namespaces" if args.all_namespaces else ", ".join(namespaces)
    logging.getLogger("fathom.operator").info("watching FathomRecipes in %s", where)
    if webhooks:
        logging.getLogger("fathom.operator").info("notifications: webhooks %s", ", ".join(w.name for w in webhooks))
    liveness = f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None
    try:
        kopf.run(standalone=not args.peering, peering_name=args.peering, clusterwide=args.all_namespaces,
                 namespaces=namespaces, settings=settings, memo=kopf.Memo(config=config), liveness_endpoint=liveness)
    finally:
        if notifier is not None:
            notifier.close()  # what is queued still goes out, briefly
    return 0


def _read_recipe(args: argparse.Namespace, namespace: str) -> dict[str, Any] | int:
    """The recipe named on the command line, or the exit code after saying in one line why not."""
    from .kube import Kube, api_message

    kube = Kube(_configuration(args.kubeconfig), threads=1)
    try:
        found = kube.get_recipe(namespace, args.name)
    except Exception as exc:  # API errors (403, unreachable server) in one line
        return _fail(f"cannot read FathomRecipe {namespace}/{args.name}: {api_message(exc)}")
    finally:
        kube.close()
    if found is None:
        return _fail(f"no FathomRecipe {args.name!r} in namespace {namespace!r}")
    return dict(found)


def cmd_cost(args: argparse.Namespace) -> int:
    namespace = args.namespace or current_namespace(args.kubeconfig)
    found = _read_recipe(args, namespace)
    if isinstance(found, int):
        return found
    status = found.get("status") or {}
    if not status.get("stages"):
        print(f"{args.name}: no cost yet (the operator has not reported on it)")
        return 0
    sys.stdout.write(cost_table(args.name, status, budget=(found.get("spec") or {}).get("budgetUSD")))
    return 0


def add_retry_arguments(parser: argparse.ArgumentParser) -> None:
    add_cost_arguments(parser)
    parser.add_argument("stage", help="The Failed stage to run again (the stages downstream of it follow).")


def cmd_retry(args: argparse.Namespace) -> int:
    """Annotate the recipe with fathom.dev/retry=<stage>@<UTC time>; the operator acts on it once."""
    from datetime import UTC, datetime

    import kubernetes

    from .api.recipe import GROUP, PLURAL, VERSION
    from .kube import api_message
    from .retry import ANNOTATION_RETRY, BUSY

    namespace = args.namespace or current_namespace(args.kubeconfig)
    where = f"FathomRecipe {namespace}/{args.name}"
    with kubernetes.client.ApiClient(_configuration(args.kubeconfig)) as client:
        api = kubernetes.client.CustomObjectsApi(client)
        try:
            found = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, args.name)
        except Exception as exc:  # API errors in one line
            if getattr(exc, "status", None) == 404:
                return _fail(f"no FathomRecipe {args.name!r} in namespace {namespace!r}")
            return _fail(f"cannot read {where}: {api_message(exc)}")
        stages = [s.get("name") for s in (found.get("spec") or {}).get("stages") or [] if isinstance(s, dict)]
        if args.stage not in stages:
            return _fail(f"{where} has no stage {args.stage!r}; its stages: {', '.join(map(str, stages))}")
        status = found.get("status") or {}
        phase = ((status.get("stages") or {}).get(args.stage) or {}).get("phase") or "Pending"
        if phase in BUSY:
            return _fail(f"{args.stage} is {phase}: it is still running (or retrying by itself); "
                         "retry it once it has failed")
        if phase != "Failed":
            failed = [n for n, s in (status.get("stages") or {}).items() if (s or {}).get("phase") == "Failed"]
            hint = f" (the failed stage is {failed[0]})" if failed else ""
            return _fail(f"{args.stage} is {phase}: only a Failed stage can be retried{hint}")
        value = f"{args.stage}@{datetime.now(UTC):%Y%m%dT%H%M%S.%fZ}"
        try:
            api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, args.name,
                                               {"metadata": {"annotations": {ANNOTATION_RETRY: value}}})
        except Exception as exc:
            return _fail(f"cannot annotate {where}: {api_message(exc)}")
    print(f"{args.name}: retry of {args.stage} requested ({ANNOTATION_RETRY}={value}); "
          f"kubectl describe frecipe {args.name} shows what the operator did with it")
    return 0


def cmd_report_cluster(args: argparse.Namespace) -> int:
    """`fathom report NAME --kubeconfig FILE`: the tables from the recipe's status, read through FILE."""
    from fathom_jobs.redact import redact

    from .results import report_from_status

    namespace = args.namespace or current_namespace(args.kubeconfig)
    found = _read_recipe(args, namespace)
    if isinstance(found, int):
        return found
    status = found.get("status") or {}
    sys.stdout.write(redact(report_from_status(status, title=f"{namespace}/{args.name} ({status.get('phase', 'Pending')})")))
    return 0
