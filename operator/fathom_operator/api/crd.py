"""The CustomResourceDefinition, generated from the pydantic models.

pydantic emits JSON Schema 2020-12; the API server wants a *structural* OpenAPI v3.0 schema: no
$ref, every node typed, no `properties` beside `additionalProperties`, logical junctors only
around fields also declared outside them, booleans for exclusive bounds. Defaults are dropped on
purpose: pydantic applies them, and server-side defaults of one stage type would land on the other
types in the merged stage schema (and show up as drift in GitOps tools).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from . import recipe, status

Schema = dict[str, Any]
_DROP = {"title", "default", "discriminator", "examples", "$defs"}
FREE_FORM_NOTE = "Free-form: the variants of this field differ between stage types."


def _resolve(node: Any, defs: dict[str, Schema]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target = defs[node["$ref"].rsplit("/", 1)[-1]]
            extra = {k: v for k, v in node.items() if k != "$ref"}
            return _resolve({**target, **extra}, defs)
        return {k: _resolve(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, defs) for v in node]
    return node


def _merge_variants(variants: list[Schema]) -> Schema:
    """One object schema for a tagged union: the union of the variants' properties."""
    merged: dict[str, Schema] = {}
    for variant in variants:
        for name, prop in variant.get("properties", {}).items():
            if name == "type":
                continue
            if name in merged and merged[name] != prop:
                scalar = prop.get("type") not in (None, "object", "array")
                if scalar and merged[name].get("type") == prop.get("type"):
                    # Same shape, different bounds or descriptions: keep the looser description only.
                    merged[name] = {k: v for k, v in merged[name].items() if k not in {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}}
                else:
                    merged[name] = {"description": FREE_FORM_NOTE, "x-kubernetes-preserve-unknown-fields": True}
            else:
                merged.setdefault(name, prop)
    tags = [v["properties"]["type"]["enum"][0] for v in variants]
    required = set.intersection(*(set(v.get("required", [])) for v in variants))
    return {
        "type": "object",
        "properties": {"type": {"type": "string", "enum": tags}, **merged},
        "required": sorted(required | {"type"}),
    }


def _structural(node: Schema) -> Schema:
    node = {k: v for k, v in node.items() if k not in _DROP}
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "oneOf" in node and all("properties" in v for v in node["oneOf"]):
        node = {**_merge_variants([_structural(v) for v in node.pop("oneOf")]), **node}
    for junctor in ("anyOf", "oneOf"):
        if junctor in node:
            options = [o for o in node.pop(junctor) if o.get("type") != "null"]
            types = {o.get("type") for o in options}
            if len(options) == 1:
                node = {**options[0], **node}
            elif types == {"integer", "string"}:
                node["x-kubernetes-int-or-string"] = True
            elif types <= {"integer", "number"}:
                node["type"] = "number"
            else:
                node["x-kubernetes-preserve-unknown-fields"] = True
    if node.get("type") == "object" or "properties" in node or "additionalProperties" in node:
        node["type"] = "object"
        props = node.get("properties")
        extra = node.get("additionalProperties")
        if props:
            node["properties"] = {k: _structural(v) for k, v in props.items()}
            node.pop("additionalProperties", None)
        elif isinstance(extra, dict) and extra:
            node["additionalProperties"] = _structural(extra)
        else:
            # dict[str, Any]: keep whatever the user or job wrote.
            node.pop("additionalProperties", None)
            node["x-kubernetes-preserve-unknown-fields"] = True
    if node.get("type") == "array" and "items" in node:
        node["items"] = _structural(node["items"])
    if "type" not in node and not node.get("x-kubernetes-int-or-string"):
        node["x-kubernetes-preserve-unknown-fields"] = True
    for bound, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), (int, float)) and not isinstance(node.get(bound), bool):
            node[inclusive] = node[bound]
            node[bound] = True
    return node


def openapi_schema(model: type[BaseModel]) -> Schema:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(_resolve(raw, raw.get("$defs", {})))


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Stage", "type": "string", "jsonPath": ".status.currentStage"},
    {"name": "Progress", "type": "string", "jsonPath": ".status.progress"},
    {"name": "GPU-Hours", "type": "number", "jsonPath": ".status.cost.gpuHours"},
    {"name": "Cost", "type": "string", "jsonPath": ".status.cost.display"},
    {"name": "Forecast", "type": "string", "jsonPath": ".status.forecast.display"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def custom_resource_definition() -> Schema:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{recipe.PLURAL}.{recipe.GROUP}"},
        "spec": {
            "group": recipe.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": recipe.KIND,
                "listKind": f"{recipe.KIND}List",
                "plural": recipe.PLURAL,
                "singular": recipe.SINGULAR,
                "shortNames": recipe.SHORT_NAMES,
                "categories": ["fathom"],
            },
            "versions": [
                {
                    "name": recipe.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A Fathom-R1-style post-training recipe run as ordered GPU Jobs.",
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": openapi_schema(recipe.RecipeSpec),
                                "status": openapi_schema(status.RecipeStatus),
                            },
                            "required": ["spec"],
                        }
                    },
                }
            ],
        },
    }
