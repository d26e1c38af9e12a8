"""Evaluation results on the FathomRecipe, and the seeds-style tables of `fathom report`.

- `eval_status(metrics, output_uri)`: what the operator merges into the status when an eval stage
  succeeds: `{"results": {model: {benchmark: {pass@1, cons@k, k, meanTokens, samples}}},
  "report": <URI of report.html>}`. `metrics` is the eval stage's metrics.json (which embeds the
  table) or its results.json. Accuracies are percentages, as in the seeds' tables (52.71).
- `merge_results(current, new)`: several eval stages write into one status.results.
- `report_from_status(status)` / `report_from_store(uri)`: the tables as text - accuracy per
  model and benchmark (pass@1 / cons@k), average response length, and cost per stage.
  `fathom report NAME [-n NS]` reads the recipe from the cluster; `fathom report --store URI`
  reads results.json and the stages' metrics from a run's store prefix (or one eval stage's).

Only the store path imports `fathom_jobs.store` (boto3), and only the cluster path imports the
kubernetes client; both lazily, so importing this module from the operator stays cheap.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from fathom_jobs.redact import redact
from fathom_jobs.report import usd_text

from .api.status import BenchmarkResult, RecipeStatus

STATUS_FIELDS = ("pass@1", "cons@k", "k", "meanTokens", "samples")
Table = Mapping[str, Mapping[str, Mapping[str, Any]]]


# ------------------------------------------------------------------------------------ status
def results_table(document: Mapping[str, Any]) -> Table:
    """The {model: {benchmark: entry}} table of a results.json or an eval metrics.json."""
    embedded = document.get("results")
    if isinstance(embedded, Mapping) and ("report" in document or "resultsFile" in document):
        return embedded
    return document


def status_results(document: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """status.results from results.json or metrics.json: the headline fields, validated."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for model, per_benchmark in results_table(document).items():
        if not isinstance(per_benchmark, Mapping):
            raise ValueError(f"results.{model}: expected {{benchmark: result}}, got {type(per_benchmark).__name__}")
        for benchmark, entry in per_benchmark.items():
            if not isinstance(entry, Mapping):
                raise ValueError(f"results.{model}.{benchmark}: expected an object, got {type(entry).__name__}")
            headline = {key: entry[key] for key in STATUS_FIELDS if key in entry}
            result = BenchmarkResult.model_validate(headline)
            out.setdefault(str(model), {})[str(benchmark)] = result.model_dump(by_alias=True, exclude_none=True)
    return out


def eval_status(metrics: Mapping[str, Any], output_uri: str | None = None) -> dict[str, Any]:
    """The status patch for a succeeded eval stage: {"results": ..., "report": URI or None}."""
    report = metrics.get("report") if isinstance(metrics.get("report"), str) else None
    if report is None and output_uri:
        report = output_uri.rstrip("/") + "/report.html"
    return {"results": status_results(metrics), "report": report}


def merge_results(current: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """status.results with `new` laid over `current` benchmark by benchmark (other models kept)."""
    merged = {model: dict(per) for model, per in (current or {}).items()}
    for model, per in new.items():
        merged.setdefault(model, {}).update(per)
    return merged


# ------------------------------------------------------------------------------------ tables
def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Plain aligned columns: the first left-aligned, the rest right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _num(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


def _benchmarks(table: Table) -> list[str]:
    seen: list[str] = []
    for per in table.values():
        seen += [b for b in per if b not in seen]
    return seen


def accuracy_table(table: Table, limo: bool = False) -> str:
    benchmarks = _benchmarks(table)
    ks = sorted({int(e["k"]) for per in table.values() for e in per.values() if e.get("k")})
    cons = f"cons@{ks[0]}" if len(ks) == 1 else "cons@k"
    rows = []
    for model, per in table.items():
        cells = []
        for benchmark in benchmarks:
            entry = per.get(benchmark)
            source = (entry or {}).get("limo", {}) if limo else entry
            cells.append(f"{_num(source.get('pass@1'))} / {_num(source.get('cons@k'))}" if source else "-")
        rows.append([model, *cells])
    grading = "LIMO-compatible grading" if limo else "strict grading"
    return f"Accuracy, {grading} (pass@1 / {cons}, %)\n" + format_table(["model", *benchmarks], rows)


def length_table(table: Table) -> str:
    benchmarks = _benchmarks(table)
    capped = any("cappedPercent" in e for per in table.values() for e in per.values())

    def cell(entry: Mapping[str, Any] | None) -> str:
        if not entry:
            return "-"
        text = _num(entry.get("meanTokens"), 0)
        return f"{text} ({_num(entry['cappedPercent'], 1)}% capped)" if "cappedPercent" in entry else text

    rows = [[model, *(cell(per.get(b)) for b in benchmarks)] for model, per in table.items()]
    title = "Average response length (mean tokens" + (", share at the token cap)" if capped else ")")
    return title + "\n" + format_table(["model", *benchmarks], rows)


def cost_table(costs: Mapping[str, Mapping[str, Any]]) -> str:
    """costs: {stage: {gpuHours, costUSD, phase?}} in stage order."""
    with_phase = any("phase" in c for c in costs.values())
    rows = [[stage, *([c.get("phase", "")] if with_phase else []), _num(c.get("gpuHours")),
             usd_text(None if c.get("costUSD") is None else float(c["costUSD"]))] for stage, c in costs.items()]
    rows.append(["total", *([""] if with_phase else []),
                 _num(sum(float(c.get("gpuHours") or 0) for c in costs.values())),
                 usd_text(sum(float(c.get("costUSD") or 0) for c in costs.values()))])
    header = ["stage", *(["phase"] if with_phase else []), "GPU-hours", "USD"]
    return "Cost per stage\n" + format_table(header, rows)


def format_report(table: Table, costs: Mapping[str, Mapping[str, Any]] | None, *, title: str = "",
                  notes: list[str] | None = None, no_costs: str = "Cost per stage: not recorded.") -> str:
    parts = [title] if title else []
    if table:
        parts.append(accuracy_table(table))
        if any("limo" in e for per in table.values() for e in per.values()):
            parts.append(accuracy_table(table, limo=True))
        parts.append(length_table(table))
    else:
        parts.append("No evaluation results yet.")
    if costs or no_costs:
        parts.append(cost_table(costs) if costs else no_costs)
    parts += notes or []
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------------------------- sources
def report_from_status(status: Mapping[str, Any], title: str = "", with_costs: bool = True) -> str:
    """`with_costs=False` where a finer cost table is printed beside it (a local run's CPU-seconds)."""
    parsed = RecipeStatus.model_validate(status or {})
    table = {m: {b: r.model_dump(by_alias=True) for b, r in per.items()} for m, per in parsed.results.items()}
    costs = {name: {"phase": s.phase, "gpuHours": s.gpu_hours, "costUSD": s.cost_usd}
             for name, s in parsed.stages.items()}
    notes = [f"Report: {parsed.report}"] if parsed.report else []
    if not with_costs:
        return format_report(table, None, title=title, notes=notes, no_costs="")
    return format_report(table, costs, title=title, notes=notes)


def read_recipe(name: str, namespace: str | None) -> tuple[dict[str, Any], str]:
    """The FathomRecipe object from the cluster (in-cluster config, else kubeconfig)."""
    from kubernetes import client, config

    from .api.recipe import GROUP, PLURAL, VERSION

    try:
        config.load_incluster_config()
        namespace = namespace or "default"
    except config.ConfigException:
        config.load_kube_config()
        if namespace is None:
            _, active = config.list_kube_config_contexts()
            namespace = (active or {}).get("context", {}).get("namespace") or "default"
    api = client.CustomObjectsApi()
    return api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name), namespace


def report_from_cluster(name: str, namespace: str | None = None) -> str:
    recipe, namespace = read_recipe(name, namespace)
    status = recipe.get("status") or {}
    return report_from_status(status, title=f"{namespace}/{name} ({status.get('phase', 'Pending')})")


def report_from_store(uri: str) -> str:
    """Tables from a run's store prefix (<storage>/<namespace>/<recipe>) or one eval stage's output."""
    from fathom_jobs.inputs import resolve_file_uri
    from fathom_jobs.store import NotFoundError, open_store

    store = open_store(resolve_file_uri(uri.rstrip("/")))
    if store.exists("results.json"):
        # An eval stage's own output: its siblings are the run's other stages.
        parent_uri, _, stage = store.uri.rpartition("/")
        run, eval_stages = open_store(parent_uri), [stage]
    else:
        run = store
        eval_stages = sorted({key.split("/")[0] for key in run.list() if key.count("/") == 1
                              and key.endswith("/results.json")})
    stages = sorted({key.split("/")[0] for key in run.list() if key.count("/") == 1
                     and key.endswith(("/metrics.json", "/_MANIFEST.json", "/results.json"))})
    table: dict[str, dict[str, Any]] = {}
    costs: dict[str, dict[str, Any]] = {}
    for stage in eval_stages:
        for model, per in results_table(run.read_json(f"{stage}/results.json")).items():
            table.setdefault(model, {}).update(per)
        try:
            costs.update(run.read_json(f"{stage}/costs.json"))  # what the operator passed the eval stage
        except NotFoundError:
            pass
    for stage in stages:
        try:
            metrics = run.read_json(f"{stage}/metrics.json")
        except NotFoundError:
            continue
        if isinstance(metrics, dict) and ("gpuHours" in metrics or "costUSD" in metrics):
            costs[stage] = {"gpuHours": metrics.get("gpuHours"), "costUSD": metrics.get("costUSD")}
    notes = [f"Stages in the store: {', '.join(stages) or 'none'}"]
    return format_report(table, costs or None, title=f"Results in {run.uri}", notes=notes,
                         no_costs="Cost per stage: not in the store; the recipe's status keeps it (fathom report NAME).")


# ---------------------------------------------------------------------------------------- cli
def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="FathomRecipe name (read from the cluster).")
    parser.add_argument("-n", "--namespace", help="Namespace (default: the kubeconfig context's, else default).")
    parser.add_argument("--store", metavar="URI",
                        help="Read a run's store prefix (s3://bucket/ns/recipe, file://...) instead of the cluster.")


def cmd_report(args: argparse.Namespace) -> int:
    import sys

    if bool(args.name) == bool(args.store):
        print("fathom report: give a recipe NAME or --store URI (one of them)", file=sys.stderr)
        return 2
    try:
        text = report_from_store(args.store) if args.store else report_from_cluster(args.name, args.namespace)
    except Exception as exc:  # the kubernetes and S3 clients raise many types; the user needs one line
        lines = str(exc).strip().splitlines()
        reason = getattr(exc, "reason", None) or (lines[0] if lines else type(exc).__name__)
        where = args.store or f"fathomrecipe {args.namespace + '/' if args.namespace else ''}{args.name}"
        print(redact(f"fathom report: {where}: {reason}"), file=sys.stderr)
        return 1
    sys.stdout.write(redact(text))  # the store and the status are written by Jobs: nothing credential-like shown
    return 0
