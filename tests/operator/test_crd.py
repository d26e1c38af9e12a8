"""The CRD is generated from the models, structural, committed in sync, and accepts the examples."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from fathom_operator.api.crd import custom_resource_definition
from tests.support.helpers import EXAMPLE_FILES, ROOT, example

CRD_COPIES = [ROOT / "manifests" / "crd.yaml", ROOT / "charts" / "fathom-operator" / "crds" / "fathomrecipes.fathom.dev.yaml"]
K8S_VERSIONS = ["1.30.0", "1.33.0"]


def schema() -> dict[str, Any]:
    return custom_resource_definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("path", CRD_COPIES, ids=lambda p: str(p.relative_to(ROOT)))
def test_committed_crd_equals_fathom_crd(path):
    printed = subprocess.run([sys.executable, "-m", "fathom_operator.cli", "crd"], capture_output=True,
                             text=True, check=True).stdout
    assert path.read_text() == printed, f"{path} drifted from the models: run `make manifests`"


def _structural_problems(node: dict[str, Any], path: str = "") -> list[str]:
    """The API server's structural-schema rules that our generator could break."""
    problems = []
    free = node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string")
    if "type" not in node and not free:
        problems.append(f"{path}: no type")
    if "$ref" in node:
        problems.append(f"{path}: $ref")
    for key in ("oneOf", "anyOf", "allOf", "not", "default", "additionalItems"):
        if key in node:
            problems.append(f"{path}: {key}")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: properties beside additionalProperties")
    for bound in ("exclusiveMinimum", "exclusiveMaximum"):
        if bound in node and not isinstance(node[bound], bool):
            problems.append(f"{path}: {bound} must be a boolean in OpenAPI v3.0")
    for name, sub in node.get("properties", {}).items():
        problems += _structural_problems(sub, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        problems += _structural_problems(node["additionalProperties"], f"{path}[*]")
    if "items" in node:
        problems += _structural_problems(node["items"], f"{path}[]")
    return problems


def test_schema_is_structural():
    assert _structural_problems(schema()) == []


def test_crd_identity_and_printer_columns():
    crd = custom_resource_definition()
    names = crd["spec"]["names"]
    assert (crd["spec"]["group"], names["kind"], names["plural"], names["shortNames"]) == (
        "fathom.dev", "FathomRecipe", "fathomrecipes", ["frecipe"])
    assert crd["spec"]["scope"] == "Namespaced"
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Phase", "Stage", "Progress", "GPU-Hours", "Cost", "Forecast", "Age"]


def _as_json_schema(node: Any) -> Any:
    """OpenAPI v3.0 (as the API server reads it, strict field validation) -> JSON Schema draft 4."""
    if not isinstance(node, dict):
        return node
    out = {k: _as_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    for key in ("properties",):
        if key in out:
            out[key] = {k: _as_json_schema(v) for k, v in node[key].items()}
    if "items" in node:
        out["items"] = _as_json_schema(node["items"])
    if node.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_examples_pass_the_crd_schema(path):
    doc = yaml.safe_load(path.read_text())
    jsonschema.Draft4Validator(_as_json_schema(schema())).validate(doc)


@pytest.mark.parametrize("change,where", [
    (lambda d: d["spec"]["stages"][0].update(pool=3), "pool"),
    (lambda d: d["spec"]["stages"][0].update(retries=-1), "retries"),
    (lambda d: d["spec"]["stages"][0].update(type="evaluate"), "type"),
    (lambda d: d["spec"].update(nodePools={"h100": {"gpusPerNode": "eight"}}), "gpusPerNode"),
    (lambda d: d["spec"].update(budgetPolicy="panic"), "budgetPolicy"),
])
def test_crd_schema_rejects_what_the_api_server_would(change, where):
    doc = example("fathom-r1-14b.yaml")
    change(doc)
    with pytest.raises(jsonschema.ValidationError) as info:
        jsonschema.Draft4Validator(_as_json_schema(schema())).validate(doc)
    assert where in "/".join(map(str, info.value.absolute_path)) + info.value.message


def test_status_fields_have_schema():
    status = schema()["properties"]["status"]["properties"]
    assert {"phase", "observedGeneration", "conditions", "stages", "cost", "results", "report"} <= set(status)
    stage = status["stages"]["additionalProperties"]["properties"]
    assert {"phase", "attempts", "job", "startTime", "completionTime", "progress", "gpuHours", "costUSD",
            "output", "metrics"} <= set(stage)
    assert stage["metrics"].get("x-kubernetes-preserve-unknown-fields") is True
    result = status["results"]["additionalProperties"]["additionalProperties"]["properties"]
    assert {"pass@1", "cons@k", "meanTokens", "samples"} <= set(result)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_crd_is_a_valid_kubernetes_object(version):
    kubernetes_validate.validate(custom_resource_definition(), version, strict=True)


def test_recipe_reference_is_generated_from_the_models():
    from fathom_operator.api.reference import recipe_reference

    committed = (ROOT / "docs" / "recipe-reference.md").read_text()
    assert committed == recipe_reference(), "docs/recipe-reference.md drifted from the models: run `make manifests`"
    for field in ("`baseModel`", "`budgetUSD`", "`maxLength`", "`numGenerations`", "`solveRate`"):
        assert field in committed
