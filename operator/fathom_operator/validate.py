"""Turning a user's document into a FathomRecipe, or into field-path errors (pure).

Every error names the field as a user would point at it (`spec.stages[3].data`) and what was
expected. `load_recipe` and `validate_document` never raise anything but `RecipeInvalid`, whatever
the input: YAML is bounded in size, nesting and alias expansion before it is built, duplicate keys
are errors, and every value that lands in a Kubernetes object is checked the way the API server
checks it (names fullmatched, label values, quantities, int32/int64 bounds, finite numbers, an
extended resource for GPUs). Credentials in URIs are refused, prices and budgets are bounded so
the cost arithmetic cannot overflow, and with an operator defaults file the admin's policy
(`policy.py`) decides what a recipe may choose. Messages are redacted (`fathom_jobs.redact`).

This module parses (schema, operator defaults) and runs every check in order; the checks live in
`document_limits` (YAML and value bounds), `formats` (Kubernetes and URL formats), `spec_checks`
(stage rules, references, the DAG) and `policy`; `FieldError` in `field_errors`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .api.recipe import API_VERSION, KIND, STAGE_MODELS, FathomRecipe, RecipeSpec
from .document_limits import check_values, load_document
from .field_errors import FieldError, RecipeInvalid, shown
from .formats import is_dns_label, is_dns_subdomain, uri_credentials
from .spec_checks import check_spec

__all__ = ["FieldError", "RecipeInvalid", "apply_defaults", "load_document", "load_recipe", "parse_recipe",
           "parse_spec", "read_defaults", "validate_document"]


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
            message = f"expected {err['ctx']['expected']}, got {shown(err['input'])}"
        else:
            message = err["msg"]
            if "input" in err and not isinstance(err["input"], (dict, list)):
                message += f", got {shown(err['input'])}"
        path = _loc_to_path(loc)
        errors.append(FieldError(f"{prefix}{path}" if prefix else path, message))
    return errors

def parse_recipe(doc: dict[str, Any], defaults: dict[str, Any] | None = None) -> FathomRecipe:
    """Schema-level parse, with apiVersion/kind checked first so a wrong file says so plainly."""
    if not isinstance(doc, Mapping):
        raise RecipeInvalid([FieldError("(document)", f"expected a mapping, got {type(doc).__name__}")])
    if errors := check_values(doc):
        raise RecipeInvalid(errors)
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

    storage is taken whole when the recipe has none; node pools and images are filled in by name;
    the ServiceAccount of stage pods and the Hugging Face token Secret when the recipe names none.
    """
    if not defaults:
        return spec
    merged = dict(spec)
    if not merged.get("storage") and defaults.get("storage"):
        merged["storage"] = defaults["storage"]
    for key in ("nodePools", "images"):
        own = merged.get(key)
        if isinstance(defaults.get(key), Mapping) and defaults[key] and (own is None or isinstance(own, Mapping)):
            merged[key] = {**defaults[key], **(own or {})}  # a wrong type stays wrong: the schema says so
    for key in ("serviceAccountName", "hfTokenSecret"):
        if not merged.get(key) and isinstance(defaults.get(key), str) and defaults[key]:
            merged[key] = defaults[key]
    return merged


def parse_spec(spec: dict[str, Any], defaults: dict[str, Any] | None = None) -> RecipeSpec:
    """Parse a `spec` alone (the operator gets it from kopf): errors are prefixed with `spec.`."""
    try:
        return RecipeSpec.model_validate(apply_defaults(spec, defaults))
    except ValidationError as exc:
        raise RecipeInvalid(_pydantic_errors(exc, prefix="spec.")) from None


def validate_document(doc: dict[str, Any], defaults: dict[str, Any] | None = None) -> FathomRecipe:
    """A document -> a FathomRecipe, or RecipeInvalid listing every problem with its field path.

    With the operator's `defaults` (Helm values), the admin's policy applies too (`policy.py`)."""
    from .policy import check_policy, policy_from_defaults

    try:
        policy = policy_from_defaults(defaults)
    except ValueError as exc:
        raise RecipeInvalid([FieldError("defaults.policy", f"the operator's policy is malformed: {exc}")]) from None
    recipe = parse_recipe(doc, defaults)
    errors = check_values(recipe.spec.model_dump(by_alias=True), "spec")  # values pydantic coerced
    meta = recipe.metadata
    if not is_dns_subdomain(meta.name):
        errors.append(FieldError("metadata.name", f"{shown(meta.name)} is not a DNS-1123 subdomain"))
    elif len(meta.name) > 63:  # it is a label value on every Job and Pod of the recipe
        errors.append(FieldError("metadata.name", f"{len(meta.name)} characters; at most 63 for a recipe "
                                                  "the operator runs (its Jobs carry it in the fathom.dev/recipe label)"))
    if meta.namespace is not None and not is_dns_label(meta.namespace):
        errors.append(FieldError("metadata.namespace", f"{shown(meta.namespace)} is not a DNS-1123 label"))
    found = doc.get("spec")
    raw_spec: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    errors += uri_credentials(raw_spec, "spec")
    errors += check_spec(recipe.spec)
    if policy is not None and defaults is not None:
        errors += [FieldError(path, message) for path, message in check_policy(policy, recipe.spec, raw_spec, defaults)]
    if not errors:  # GPU memory: only a well-formed recipe has placements to check
        from .forecast import check_recipe

        try:
            errors += [FieldError(p.path, p.problem.message) for p in check_recipe(recipe)]
        except (ArithmeticError, ValueError, TypeError) as exc:  # a shape no GPU check can follow
            errors.append(FieldError("spec", f"the GPU memory check cannot follow this recipe "
                                             f"({type(exc).__name__}: {str(exc)[:200]})"))
    if errors:
        raise RecipeInvalid(_unique(errors))
    return recipe


def _unique(errors: list[FieldError]) -> list[FieldError]:
    return list(dict.fromkeys(errors))


def load_recipe(text: str, source: str = "recipe", defaults: dict[str, Any] | None = None) -> FathomRecipe:
    """YAML text -> a validated FathomRecipe, or RecipeInvalid with every error found."""
    return validate_document(load_document(text, source), defaults)
