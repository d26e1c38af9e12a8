"""`fathom operator` and `fathom cost`: the cluster-facing commands (kopf and the client load lazily)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from .cost import cost_table

SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
GLOB = set("*?[")


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
    from .reconcile import OperatorConfig

    config = OperatorConfig.from_env(defaults=defaults, kubeconfig=args.kubeconfig, metrics=OperatorMetrics())
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
    kopf.run(standalone=not args.peering, peering_name=args.peering, clusterwide=args.all_namespaces,
             namespaces=namespaces, settings=settings, memo=kopf.Memo(config=config))
    return 0


def cmd_cost(args: argparse.Namespace) -> int:
    from .kube import Kube, api_message

    kube = Kube(_configuration(args.kubeconfig), threads=1)
    namespace = args.namespace or current_namespace(args.kubeconfig)
    try:
        found = kube.get_recipe(namespace, args.name)
    except Exception as exc:  # API errors (403, unreachable server) in one line
        return _fail(f"cannot read FathomRecipe {namespace}/{args.name}: {api_message(exc)}")
    finally:
        kube.close()
    if found is None:
        return _fail(f"no FathomRecipe {args.name!r} in namespace {namespace!r}")
    status = found.get("status") or {}
    if not status.get("stages"):
        print(f"{args.name}: no cost yet (the operator has not reported on it)")
        return 0
    sys.stdout.write(cost_table(args.name, status, budget=(found.get("spec") or {}).get("budgetUSD")))
    return 0
