"""The `fathom` command: validate, render, crd, and the verbs of runner.py (operator, cost, retry),
logs.py (logs), localview.py (run --local) and results.py (report), each imported only when it runs."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from . import __version__, dag, results
from .api.crd import custom_resource_definition
from .api.recipe import FathomRecipe
from .cost import format_usd
from .forecast import Forecast
from .logs import add_logs_arguments
from .render import render_recipe, stage_gpus
from .validate import RecipeInvalid, load_recipe, read_defaults


def _load(path: str, defaults_path: str | None = None) -> FathomRecipe:
    try:
        defaults = read_defaults(defaults_path)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(1) from None
    try:
        text = Path(path).read_text() if path != "-" else sys.stdin.read()
    except OSError as exc:
        print(f"{path}: cannot read: {exc.strerror}", file=sys.stderr)
        raise SystemExit(1) from None
    try:
        return load_recipe(text, source=path, defaults=defaults)
    except RecipeInvalid as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        raise SystemExit(1) from None


def dump_yaml(objects: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False, width=120)


def cmd_validate(args: argparse.Namespace) -> int:
    recipe = _load(args.file, args.defaults)
    spec = recipe.spec
    order = dag.levels(dag.dependencies(spec))
    print(f"{recipe.metadata.name}: valid - {len(spec.stages)} stages in {len(order)} levels")
    by_name = {s.name: s for s in spec.stages}
    deps = dag.dependencies(spec)
    for depth, level in enumerate(order, 1):
        for name in level:
            stage = by_name[name]
            gpus = stage_gpus(spec, stage)
            pods = stage.nodes if stage.nodes > 1 else stage.shards
            where = f"{stage.pool}, {pods} pod{'s' if pods > 1 else ''}" + (f" x {gpus} GPU" if gpus else "")
            after = f"  <- {', '.join(deps[name])}" if deps[name] else ""
            print(f"  {depth}. {name:<22} {stage.type:<11} [{where}]{after}")
    from .estimate import budget_verdict

    found = _forecast(recipe, None)
    print(f"forecast: {found.gpu_hours:,.2f} GPU-hours, {format_usd(found.usd)}{budget_verdict(found)}"
          " (fathom estimate for the breakdown)")
    for warning in found.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if found.budget_usd is not None and found.usd > found.budget_usd:
        print(f"warning: the forecast {format_usd(found.usd)} exceeds budgetUSD {format_usd(found.budget_usd)}",
              file=sys.stderr)
    return 0


def _forecast(recipe: FathomRecipe, calibration_path: str | None) -> Forecast:
    """The recipe's forecast, with the base model's config.json when it is a local directory."""
    from .forecast import forecast
    from .hardware import CalibrationError, load_calibration

    try:
        calibration = load_calibration(calibration_path) if calibration_path else None
    except CalibrationError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(1) from None
    return forecast(recipe, calibration, model=_local_model_config(recipe.spec.base_model))


def _local_model_config(uri: str) -> dict[str, Any] | None:
    path = Path(uri[len("file://"):]) / "config.json" if uri.startswith("file://") else None
    try:
        loaded = json.loads(path.read_text()) if path is not None and path.is_file() else None
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) and "num_hidden_layers" in loaded else None


def cmd_estimate(args: argparse.Namespace) -> int:
    from .estimate import render_table, to_dict

    found = _forecast(_load(args.file, args.defaults), args.calibration)
    if args.output == "json":
        print(json.dumps(to_dict(found), indent=2))
    else:
        sys.stdout.write(render_table(found))
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    recipe = _load(args.file, args.defaults)
    sys.stdout.write(dump_yaml(render_recipe(recipe, namespace=args.namespace)))
    return 0


def cmd_crd(args: argparse.Namespace) -> int:
    sys.stdout.write(dump_yaml([custom_resource_definition()]))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    if args.kubeconfig and args.name and not args.store:
        code: int = _runner("cmd_report_cluster")(args)  # results.read_recipe knows only the default kubeconfig
        return code
    return results.cmd_report(args)


def _cmd_logs(args: argparse.Namespace) -> int:
    from .logs import cmd_logs

    return cmd_logs(args)


def _runner(name: str) -> Callable[..., Any]:
    """The cluster commands live in runner.py; kopf and the client are imported only when they run."""
    from . import runner

    found: Callable[..., Any] = getattr(runner, name)
    return found


def _local_run(args: argparse.Namespace) -> int:
    from .localview import cmd_run

    return cmd_run(args)


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    from .localview import add_run_arguments

    add_run_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fathom", description="Run Fathom-R1-style post-training recipes on Kubernetes.")
    parser.add_argument("--version", action="version", version=f"fathom {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    defaults_help = "Operator defaults (storage, nodePools, images) as the Helm chart configures them."
    validate = add("validate", cmd_validate, "Check a recipe file; print its stages in execution order.")
    validate.add_argument("file")
    validate.add_argument("--defaults", help=defaults_help)
    render = add("render", cmd_render, "Print every Kubernetes object the operator would create (attempt 0).")
    render.add_argument("file")
    render.add_argument("-n", "--namespace", help="Namespace of the recipe (default: metadata.namespace or default).")
    render.add_argument("--defaults", help=defaults_help)
    add("crd", cmd_crd, "Print the FathomRecipe CustomResourceDefinition.")
    estimate = add("estimate", cmd_estimate, "Forecast a recipe's GPU-hours, USD and wall time per stage before it runs.")
    estimate.add_argument("file")
    estimate.add_argument("--defaults", help=defaults_help)
    estimate.add_argument("--calibration", help="GPU calibration JSON (bench/gpu_calibrate.py writes it).")
    estimate.add_argument("-o", "--output", choices=("table", "json"), default="table")
    operator = add("operator", _runner("cmd_operator"), "Run the operator against the current kubeconfig (or in-cluster).")
    _runner("add_operator_arguments")(operator)
    cost = add("cost", _runner("cmd_cost"), "Print a recipe's GPU-hours and USD per stage, from the cluster.")
    _runner("add_cost_arguments")(cost)
    retry = add("retry", _runner("cmd_retry"),
                "Run a Failed stage again with a fresh retry budget, and the stages downstream of it "
                "(through the fathom.dev/retry annotation; the spec is not edited). Refused while the stage runs; "
                "a Succeeded stage is re-run by changing its spec.")
    _runner("add_retry_arguments")(retry)
    run = add("run", _local_run, "Run a recipe end to end on this machine (--local): stages as local processes.")
    _add_run_arguments(run)
    report = add("report", cmd_report, "Print eval results and cost per stage (the seeds' tables).")
    results.add_report_arguments(report)
    report.add_argument("--kubeconfig", help="Kubeconfig file (default: in-cluster, else $KUBECONFIG or ~/.kube/config).")
    logs = add("logs", _cmd_logs, "Print (-f: follow) the pod logs of a stage's attempt, each line prefixed by the "
               "pod index; from the store once the pods are gone.")
    add_logs_arguments(logs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
