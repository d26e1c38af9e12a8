"""Fathom's own rules on a parsed spec, beyond the schema (pure): stage names, placement on node
pools, per-type parameters, references between stages and the DAG having no cycle.

Separate from `validate` (which parses and runs every check in order) so each rule reads on its own;
every error carries its field path.
"""

from __future__ import annotations

import difflib

from fathom_jobs import registry, specs

from . import dag
from .api.recipe import BASE, RecipeSpec, StageCommon
from .field_errors import FieldError, shown
from .formats import check_formats, is_dns_label, is_dns_subdomain

COUNT_BOUNDS = {"samples": 4096, "num_generations": 4096}  # per-problem sample counts
# `<recipe>-<stage>-<attempt>` must fit in 63; the recipe part is hash-shortened, the stage is not.
MAX_STAGE_NAME = 40
BENCHMARKS = specs.SHIPPED_DATASETS
SAMPLING_TYPES = sorted(name for name, row in registry.STAGE_TYPES.items() if row.samples)
TRAINING_TYPES = sorted(name for name, row in registry.STAGE_TYPES.items() if row.trains)


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _uri_error(value: str, allowed: tuple[str, ...]) -> str | None:
    if not value.startswith(allowed):
        return f"expected a URI starting with {' or '.join(allowed)}, got {value!r}"
    return None


def _check_band(band: specs.SolveRateBand, path: str) -> list[FieldError]:
    errors = []
    for field in ("above", "at_least", "below", "at_most"):
        value = getattr(band, field)
        if value is not None and not 0.0 <= value <= 1.0:
            alias = specs.SolveRateBand.model_fields[field].alias
            errors.append(FieldError(f"{path}.{alias}", f"solve rates lie in [0, 1], got {value}"))
    if band.above is not None and band.at_least is not None:
        errors.append(FieldError(path, "give one lower bound: above (exclusive) or atLeast (inclusive), not both"))
    if band.below is not None and band.at_most is not None:
        errors.append(FieldError(path, "give one upper bound: below (exclusive) or atMost (inclusive), not both"))
    low = band.above if band.above is not None else band.at_least
    high = band.below if band.below is not None else band.at_most
    if errors or low is None or high is None:
        return errors
    empty = low > high or (low == high and (band.above is not None or band.below is not None))
    if empty:
        errors.append(FieldError(path, f"empty band: lower bound {low} is not below upper bound {high}"))
    return errors


def _check_stage_params(stage: StageCommon, path: str, spec: RecipeSpec) -> list[FieldError]:
    errors: list[FieldError] = []
    for field, bound in COUNT_BOUNDS.items():  # counts the operator itself loops over (rate grids, forecasts)
        value = getattr(stage, field, None)
        alias = type(stage).model_fields[field].alias if field in type(stage).model_fields else field
        if isinstance(value, int) and not isinstance(value, bool) and value > bound:
            errors.append(FieldError(f"{path}.{alias}", f"{value} is more than {bound:,}"))
    if isinstance(stage, specs.CurateParams):
        select = stage.effective().select
        if select and select.solve_rate:
            errors += _check_band(select.solve_rate, f"{path}.select.solveRate")
        if select and select.difficulty:
            d = select.difficulty
            for key in ("min", "max"):
                value = getattr(d, key)
                if value is not None and not 1 <= value <= 10:
                    errors.append(FieldError(f"{path}.select.difficulty.{key}", f"difficulty is rated 1-10, got {value}"))
            if d.min is not None and d.max is not None and d.min > d.max:
                errors.append(FieldError(f"{path}.select.difficulty", f"min {d.min} is above max {d.max}"))
    elif isinstance(stage, specs.MergeParams):
        weights = [m.weight for m in stage.models]
        for i, w in enumerate(weights):
            if w < 0:
                errors.append(FieldError(f"{path}.models[{i}].weight", f"linear merge weights must be >= 0, got {w}"))
        if all(w == 0 for w in weights):
            errors.append(FieldError(f"{path}.models", "at least one weight must be above 0"))
        seen = [m.model for m in stage.models]
        for i, name in enumerate(seen):
            if name in seen[:i]:
                errors.append(FieldError(f"{path}.models[{i}].model", f'"{name}" is listed twice'))
    elif isinstance(stage, (specs.EvalParams, specs.PrepareParams)):
        field = "benchmarks" if isinstance(stage, specs.EvalParams) else "decontaminate"
        for i, bench in enumerate(getattr(stage, field)):
            if "://" not in bench and bench not in BENCHMARKS:
                errors.append(FieldError(
                    f"{path}.{field}[{i}]",
                    f'unknown benchmark "{bench}"{_suggest(bench, list(BENCHMARKS))}; expected one of '
                    f"{', '.join(BENCHMARKS)} or a store URI",
                ))
    if isinstance(stage, specs.PrepareParams):
        for i, source in enumerate(stage.sources):
            if source.uri not in BENCHMARKS and (msg := _uri_error(source.uri, specs.STORE_SCHEMES)):
                errors.append(FieldError(f"{path}.sources[{i}].uri", msg))
    if isinstance(stage, specs.GrpoParams):
        pool = spec.node_pools.get(stage.pool)
        gpus = stage.gpus_per_node if stage.gpus_per_node is not None else (pool.gpus_per_node if pool else 0)
        world = max(1, gpus) * stage.nodes
        batch = stage.per_device_batch_size * world * stage.gradient_accumulation_steps
        if stage.use_vllm and max(1, gpus) % stage.vllm_tensor_parallel_size:
            errors.append(FieldError(f"{path}.vllmTensorParallelSize",
                                     f"{stage.vllm_tensor_parallel_size} does not divide the pod's {gpus} GPUs"))
        if batch % stage.num_generations:
            errors.append(FieldError(
                f"{path}.numGenerations",
                f"the generation batch (perDeviceBatchSize {stage.per_device_batch_size} x {world} processes x "
                f"gradientAccumulationSteps {stage.gradient_accumulation_steps} = {batch}) must be divisible by "
                f"numGenerations {stage.num_generations}",
            ))
    return errors


def _vllm_field(stage: StageCommon) -> str | None:
    """The field that asks for vLLM (which needs GPUs), or None."""
    if isinstance(stage, specs.GrpoParams):
        return "useVllm" if stage.use_vllm else None
    if isinstance(stage, specs.AnnotateParams):
        return "judge.backend" if stage.judge.backend == "vllm" else None
    return "engine" if getattr(stage, "engine", None) == "vllm" else None


def _check_placement(stage: StageCommon, path: str, spec: RecipeSpec) -> list[FieldError]:
    pools = sorted(spec.node_pools)
    pool = spec.node_pools.get(stage.pool)
    if pool is None:
        return [FieldError(f"{path}.pool", f'no node pool named "{stage.pool}"{_suggest(stage.pool, pools)}; '
                                          f"expected one of {', '.join(pools)}")]
    errors = []
    gpus = stage.gpus_per_node if stage.gpus_per_node is not None else pool.gpus_per_node
    if gpus > pool.gpus_per_node:
        errors.append(FieldError(f"{path}.gpusPerNode", f'{gpus} GPUs per pod, but pool "{stage.pool}" nodes have {pool.gpus_per_node}'))
    field = _vllm_field(stage)
    if field is not None and gpus == 0:
        errors.append(FieldError(f"{path}.{field}", f'vLLM needs GPUs, but the stage has none (pool "{stage.pool}"); '
                                                    "use the transformers engine or a GPU pool"))
    row = registry.stage_type(stage.type)
    if stage.shards > 1 and not row.samples:
        errors.append(FieldError(f"{path}.shards", f"only sampling stages ({', '.join(SAMPLING_TYPES)}) are sharded"))
    if stage.nodes > 1 and not row.trains:
        errors.append(FieldError(f"{path}.nodes", f"only training stages ({', '.join(TRAINING_TYPES)}) span nodes"))
    if stage.nodes > 1 and gpus == 0:
        errors.append(FieldError(f"{path}.nodes", "multi-node training needs GPUs on each node"))
    return errors


def _check_references(spec: RecipeSpec) -> list[FieldError]:
    by_name = {s.name: (i, s) for i, s in enumerate(spec.stages)}
    errors = []
    for i, stage in enumerate(spec.stages):
        for ref in dag.references(stage):
            path = f"spec.stages[{i}]{ref.dotted()}"
            if ref.is_uri:
                if msg := _uri_error(ref.target, specs.STORE_SCHEMES):
                    errors.append(FieldError(path, msg))
                continue
            if ref.target == BASE:
                produced = specs.MODEL
            elif ref.target in by_name:
                _, target = by_name[ref.target]
                produced = registry.stage_type(target.type).output(target)
            else:
                hint = _suggest(ref.target, [*by_name, BASE])
                errors.append(FieldError(path, f'no stage named "{ref.target}"{hint}'))
                continue
            if produced not in ref.kinds:
                what = f'stage "{ref.target}" ({by_name[ref.target][1].type})' if ref.target in by_name else BASE
                errors.append(FieldError(path, f"{what} produces {produced}; expected {' or '.join(ref.kinds)}"))
    return errors


def check_spec(spec: RecipeSpec) -> list[FieldError]:
    """Semantic checks beyond the schema; every error carries its field path."""
    errors: list[FieldError] = []
    if spec.storage is None:
        errors.append(FieldError("spec.storage", "required: where stage outputs go (no operator default is configured)"))
    elif msg := _uri_error(spec.storage.uri, ("s3://", "file://")):
        errors.append(FieldError("spec.storage.uri", msg))
    if not spec.node_pools:
        return errors + [FieldError("spec.nodePools", "required: at least one node pool (no operator default is configured)")]
    if msg := _uri_error(spec.base_model, specs.STORE_SCHEMES):
        errors.append(FieldError("spec.baseModel", msg))
    from .policy import secret_fields

    for path, name in secret_fields(spec):
        if name is not None and not is_dns_subdomain(name):
            errors.append(FieldError(path, f"{shown(name)} is not a valid Secret name (DNS-1123 subdomain)"))
    first_index: dict[str, int] = {}
    for i, stage in enumerate(spec.stages):
        path = f"spec.stages[{i}]"
        if not is_dns_label(stage.name):
            quoted = f'"{stage.name}"' if len(stage.name) <= 80 and stage.name.isprintable() else shown(stage.name)
            errors.append(FieldError(f"{path}.name", f"{quoted} is not a DNS-1123 label "
                                                     "(lowercase letters, digits and '-', alphanumeric at both ends)"))
        elif len(stage.name) > MAX_STAGE_NAME:
            errors.append(FieldError(f"{path}.name", f'"{stage.name}" is {len(stage.name)} characters; at most '
                                                     f"{MAX_STAGE_NAME} so Job names <recipe>-<stage>-<attempt> fit in 63"))
        if stage.name == BASE:
            errors.append(FieldError(f"{path}.name", f'"{BASE}" is reserved for spec.baseModel'))
        if stage.name in first_index:
            errors.append(FieldError(f"{path}.name", f'duplicate stage name "{stage.name}" (first at spec.stages[{first_index[stage.name]}])'))
        first_index.setdefault(stage.name, i)
        errors += _check_placement(stage, path, spec)
        errors += _check_stage_params(stage, path, spec)
    errors += _check_references(spec)
    errors += check_formats(spec)
    if not any(e.message.startswith("no stage named") for e in errors):
        deps = dag.dependencies(spec)
        if cycle := dag.find_cycle(deps):
            i = first_index[cycle[0]]
            ref = next(r for r in dag.references(spec.stages[i]) if r.target == cycle[1])
            errors.append(FieldError(f"spec.stages[{i}]{ref.dotted()}", f"cycle: {' -> '.join(cycle)}"))
    return errors

