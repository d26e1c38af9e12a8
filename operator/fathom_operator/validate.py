"""Turning a user's document into a FathomRecipe, or into field-path errors (pure).

Every error names the field as a user would point at it (`spec.stages[3].data`) and what was
expected. `load_recipe` never raises anything but `RecipeInvalid`.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fathom_jobs import registry, specs

from . import dag
from .api.recipe import API_VERSION, BASE, KIND, STAGE_MODELS, FathomRecipe, RecipeSpec, StageCommon

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# `<recipe>-<stage>-<attempt>` must fit in 63; the recipe part is hash-shortened, the stage is not.
MAX_STAGE_NAME = 40
BENCHMARKS = specs.SHIPPED_DATASETS
SAMPLING_TYPES = sorted(name for name, row in registry.STAGE_TYPES.items() if row.samples)
TRAINING_TYPES = sorted(name for name, row in registry.STAGE_TYPES.items() if row.trains)


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class RecipeInvalid(Exception):
    def __init__(self, errors: list[FieldError]):
        self.errors = errors
        super().__init__("\n".join(map(str, errors)))


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for i, item in enumerate(loc):
        # A tagged union puts the tag in the location: spec.stages.3.sft.maxLength.
        if isinstance(item, str) and item in STAGE_MODELS and i >= 1 and isinstance(loc[i - 1], int):
            continue
        parts.append(f"[{item}]" if isinstance(item, int) else (f".{item}" if parts else str(item)))
    return "".join(parts) or "(document)"


def _pydantic_errors(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    errors = []
    for err in exc.errors(include_url=False):
        loc, kind = tuple(err["loc"]), err["type"]
        if kind == "union_tag_invalid":
            message = f'unknown stage type "{err["ctx"]["tag"]}"; expected one of {", ".join(STAGE_MODELS)}'
            loc = (*loc, "type")
        elif kind == "union_tag_not_found":
            message = f'field "type" is required; expected one of {", ".join(STAGE_MODELS)}'
            loc = (*loc, "type")
        elif kind == "missing":
            message = "required field is missing"
        elif kind == "extra_forbidden":
            message = f'unknown field "{loc[-1]}"'
        elif kind == "literal_error":
            message = f"expected {err['ctx']['expected']}, got {err['input']!r}"
        else:
            message = err["msg"]
            if "input" in err and not isinstance(err["input"], (dict, list)):
                message += f", got {err['input']!r}"
        path = _loc_to_path(loc)
        errors.append(FieldError(f"{prefix}{path}" if prefix else path, message))
    return errors


def load_document(text: str, source: str = "recipe") -> dict[str, Any]:
    """One YAML document holding a mapping, or RecipeInvalid."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "document"
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeInvalid([FieldError(f"{source}: {where}", f"malformed YAML: {problem}")]) from None
    if not docs:
        raise RecipeInvalid([FieldError(source, "empty document; expected one FathomRecipe")])
    if len(docs) > 1:
        raise RecipeInvalid([FieldError(source, f"{len(docs)} documents; expected exactly one FathomRecipe per file")])
    if not isinstance(docs[0], dict):
        raise RecipeInvalid([FieldError(source, f"expected a mapping (a FathomRecipe), got {type(docs[0]).__name__}")])
    return docs[0]


def parse_recipe(doc: dict[str, Any], defaults: dict[str, Any] | None = None) -> FathomRecipe:
    """Schema-level parse, with apiVersion/kind checked first so a wrong file says so plainly."""
    if doc.get("apiVersion") != API_VERSION:
        raise RecipeInvalid([FieldError("apiVersion", f"expected {API_VERSION}, got {doc.get('apiVersion')!r}")])
    if doc.get("kind") != KIND:
        raise RecipeInvalid([FieldError("kind", f"expected {KIND}, got {doc.get('kind')!r}")])
    if isinstance(doc.get("spec"), dict):
        doc = {**doc, "spec": apply_defaults(doc["spec"], defaults)}
    try:
        return FathomRecipe.model_validate(doc)
    except ValidationError as exc:
        raise RecipeInvalid(_pydantic_errors(exc)) from None


def read_defaults(path: str | None) -> dict[str, Any] | None:
    """The operator's defaults file (the Helm chart mounts it; JSON or YAML); ValueError says why not."""
    if not path:
        return None
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read defaults: {exc}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ValueError(f"{path}: defaults must be a mapping")
    return loaded


def apply_defaults(spec: dict[str, Any], defaults: dict[str, Any] | None) -> dict[str, Any]:
    """The operator's defaults (Helm values) under a recipe's spec: the recipe's own values win.

    storage is taken whole when the recipe has none; node pools and images are filled in by name.
    """
    if not defaults:
        return spec
    merged = dict(spec)
    if not merged.get("storage") and defaults.get("storage"):
        merged["storage"] = defaults["storage"]
    for key in ("nodePools", "images"):
        if defaults.get(key):
            merged[key] = {**defaults[key], **(merged.get(key) or {})}
    return merged


def parse_spec(spec: dict[str, Any], defaults: dict[str, Any] | None = None) -> RecipeSpec:
    """Parse a `spec` alone (the operator gets it from kopf): errors are prefixed with `spec.`."""
    try:
        return RecipeSpec.model_validate(apply_defaults(spec, defaults))
    except ValidationError as exc:
        raise RecipeInvalid(_pydantic_errors(exc, prefix="spec.")) from None


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
    secrets = [("spec.storage.credentialsSecret", spec.storage.credentials_secret if spec.storage else None),
               ("spec.hfTokenSecret", spec.hf_token_secret)]
    for i, stage in enumerate(spec.stages):
        if isinstance(stage, specs.AnnotateParams):
            secrets.append((f"spec.stages[{i}].judge.apiKeySecret", stage.judge.api_key_secret))
    for path, name in secrets:
        if name is not None and not DNS_SUBDOMAIN.match(name):
            errors.append(FieldError(path, f"{name!r} is not a valid Secret name (DNS-1123 subdomain)"))
    first_index: dict[str, int] = {}
    for i, stage in enumerate(spec.stages):
        path = f"spec.stages[{i}]"
        if not DNS_LABEL.match(stage.name):
            errors.append(FieldError(f"{path}.name", f'"{stage.name}" is not a DNS-1123 label '
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
    if not any(e.message.startswith("no stage named") for e in errors):
        deps = dag.dependencies(spec)
        if cycle := dag.find_cycle(deps):
            i = first_index[cycle[0]]
            ref = next(r for r in dag.references(spec.stages[i]) if r.target == cycle[1])
            errors.append(FieldError(f"spec.stages[{i}]{ref.dotted()}", f"cycle: {' -> '.join(cycle)}"))
    return errors


def validate_document(doc: dict[str, Any], defaults: dict[str, Any] | None = None) -> FathomRecipe:
    recipe = parse_recipe(doc, defaults)
    errors = []
    if not DNS_SUBDOMAIN.match(recipe.metadata.name):
        errors.append(FieldError("metadata.name", f"{recipe.metadata.name!r} is not a DNS-1123 subdomain"))
    elif len(recipe.metadata.name) > 63:  # it is a label value on every Job and Pod of the recipe
        errors.append(FieldError("metadata.name", f"{len(recipe.metadata.name)} characters; at most 63 for a recipe "
                                                  "the operator runs (its Jobs carry it in the fathom.dev/recipe label)"))
    errors += check_spec(recipe.spec)
    if not errors:  # GPU memory: only a well-formed recipe has placements to check
        from .forecast import check_recipe

        errors += [FieldError(p.path, p.problem.message) for p in check_recipe(recipe)]
    if errors:
        raise RecipeInvalid(errors)
    return recipe


def load_recipe(text: str, source: str = "recipe", defaults: dict[str, Any] | None = None) -> FathomRecipe:
    """YAML text -> a validated FathomRecipe, or RecipeInvalid with every error found."""
    return validate_document(load_document(text, source), defaults)
