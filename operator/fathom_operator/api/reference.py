"""The recipe reference (docs/recipe-reference.md), generated from the same models as the CRD."""

from __future__ import annotations

import typing
from collections.abc import Set
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from . import hints, recipe

_SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("spec", recipe.RecipeSpec),
    ("spec.storage", recipe.Storage),
    ("spec.nodePools.<name>", recipe.NodePool),
    ("spec.images", recipe.Images),
    ("spec.modelInfo", hints.ModelInfo),
    ("spec.stages[] (every stage)", recipe.StageCommon),
    ("spec.stages[].estimate", hints.EstimateHints),
]


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (list, tuple):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"map of {_type_name(args[1])}" if len(args) == 2 else "map"
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(_type_name(a) for a in args)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation.__name__
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        return f"`{value}`" if value not in ({}, []) and not isinstance(value, BaseModel) else "—"
    if field.default is PydanticUndefined:
        return "**required**"
    if field.default is None:
        return "—"
    return f"`{str(field.default).lower() if isinstance(field.default, bool) else field.default}`"


def _table(model: type[BaseModel], skip: Set[str] = frozenset()) -> list[str]:
    rows = ["| field | type | default | description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        key = field.alias or name
        if key in skip:
            continue
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{key}` | {_type_name(field.annotation)} | {_default(field)} | {description} |")
    return rows


def _nested_models(model: type[BaseModel], seen: set[type]) -> list[type[BaseModel]]:
    found = []
    for field in model.model_fields.values():
        for arg in [field.annotation, *typing.get_args(field.annotation)]:
            for inner in [arg, *typing.get_args(arg)]:
                if isinstance(inner, type) and issubclass(inner, BaseModel) and inner not in seen:
                    seen.add(inner)
                    found += [inner, *_nested_models(inner, seen)]
    return found


def recipe_reference() -> str:
    lines = ["# FathomRecipe reference", "",
             "Generated from the API models (`make manifests`); the CRD comes from the same models.", ""]
    for title, model in _SECTIONS:
        lines += [f"## `{title}`", "", *_table(model, skip={"stages"} if model is recipe.RecipeSpec else set()), ""]
    common = set(recipe.StageCommon.model_fields)
    for stage_type, model in recipe.STAGE_MODELS.items():
        lines += [f"## `type: {stage_type}`", "", *_table(model, skip={"type"} | {recipe.StageCommon.model_fields[c].alias or c for c in common}), ""]
        seen: set[type] = {recipe.StageCommon}
        for nested in _nested_models(model, seen):
            if nested.__module__.endswith("specs"):
                lines += [f"### `{nested.__name__}` (in `{stage_type}`)", "", *_table(nested), ""]
    return "\n".join(lines).rstrip() + "\n"
