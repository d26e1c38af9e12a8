"""Every consumer of the stage-type registry covers exactly its rows: CRD, validation, render, the job
entry point, the memo contract and the recipe reference."""

from __future__ import annotations

import importlib.util

import pytest
import yaml

from fathom_jobs import __main__ as job_entry
from fathom_jobs import registry
from fathom_jobs.memo import stage_inputs
from fathom_operator import dag
from fathom_operator.api.crd import custom_resource_definition
from fathom_operator.api.recipe import STAGE_MODELS, Images
from fathom_operator.render import render_stage, resolved_params, stage_image
from fathom_operator.validate import RecipeInvalid, load_recipe, validate_document
from tests.support.helpers import ROOT, example

ROWS = list(registry.STAGE_TYPES.values())


@pytest.fixture(scope="module")
def every_type():
    """tiny-cpu.yaml: a stage of each of today's types (a new type's row is covered by the other tests)."""
    return validate_document(example("tiny-cpu.yaml"))


def test_crd_and_models_have_one_stage_model_per_row():
    assert list(STAGE_MODELS) == list(registry.NAMES)
    for row in ROWS:
        assert issubclass(STAGE_MODELS[row.name], row.params)
    schema = custom_resource_definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    stage_schema = schema["properties"]["spec"]["properties"]["stages"]["items"]
    assert stage_schema["properties"]["type"]["enum"] == list(registry.NAMES)


def test_validation_names_the_registered_types(every_type):
    doc = example("tiny-cpu.yaml")
    doc["spec"]["stages"][0]["type"] = "no-such-type"
    with pytest.raises(RecipeInvalid) as err:
        load_recipe(yaml.safe_dump(doc))
    assert f"expected one of {', '.join(registry.NAMES)}" in str(err.value)


def test_sharding_and_nodes_follow_the_rows_flags(every_type):
    for row in ROWS:
        doc = example("tiny-cpu.yaml")
        stage = next((s for s in doc["spec"]["stages"] if s["type"] == row.name), None)
        if stage is None:
            continue
        stage["shards"] = 2
        errors = _errors(doc)
        assert any(e.endswith(".shards: only sampling stages (annotate, eval, solve-rate) are sharded")
                   for e in errors) is not row.samples, row.name


def _errors(doc):
    try:
        validate_document(doc)
    except RecipeInvalid as exc:
        return [str(e) for e in exc.errors]
    return []


def test_render_uses_the_rows_family_and_entry_point(every_type):
    assert set(registry.FAMILIES) == set(Images.model_fields)
    for stage in every_type.spec.stages:
        row = registry.stage_type(stage.type)
        family = row.family(stage)
        assert family in registry.FAMILIES
        job = render_stage(every_type, stage.name)[-1]
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == ["python", "-m", "fathom_jobs", row.name]
        assert container["image"] == stage_image(every_type.spec, stage)
        assert f"fathom-{family}:" in container["image"]


def test_the_job_entry_point_accepts_exactly_the_rows_and_finds_each_module(capsys):
    with pytest.raises(SystemExit):
        job_entry.main(["no-such-type"])
    assert "choose from " + ", ".join(f"'{n}'" for n in registry.NAMES) in capsys.readouterr().err
    for row in ROWS:
        found = importlib.util.find_spec(f"fathom_jobs.stages.{row.module}")
        assert found is not None and found.origin, row.module
        source = open(found.origin).read()
        assert "\ndef run(job" in source, f"fathom_jobs.stages.{row.module} has no run(job)"


def test_memo_inputs_cover_every_reference_of_each_type(every_type):
    spec = every_type.spec
    for stage in spec.stages:
        params = resolved_params(spec, "ns", every_type.metadata.name, stage)
        inputs = stage_inputs(stage.type, params)
        for ref in dag.references(stage):
            node = params
            for key in ref.path:
                node = node[key]
            assert node in inputs, f"{stage.name}: {ref.dotted()} is not in its fingerprint's inputs"


def test_the_reference_has_a_section_per_row():
    text = (ROOT / "docs" / "recipe-reference.md").read_text()
    sections = [line.split("`type: ")[1].rstrip("`") for line in text.splitlines() if line.startswith("## `type: ")]
    assert sections == list(registry.NAMES)


def test_runtime_fields_rerun_nothing_output_fields_do():
    from fathom_operator.fingerprints import stage_fingerprints

    def fingerprints(**sft_fields):
        doc = example("fathom-r1-14b.yaml")
        next(s for s in doc["spec"]["stages"] if s["name"] == "sft-curriculum").update(sft_fields)
        return stage_fingerprints(validate_document(doc), "ns")

    base = fingerprints()
    assert fingerprints(reportTo="none", keepCheckpoints=5, collectiveTimeoutMinutes=30) == base
    changed = fingerprints(learningRate=2e-5)
    assert changed["sft-curriculum"] != base["sft-curriculum"]
    assert changed["fathom-r1-14b"] != base["fathom-r1-14b"]  # downstream follows
    assert changed["sft-shortest"] == base["sft-shortest"]
