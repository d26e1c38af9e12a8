"""`fathom validate`: valid examples print their plan; broken recipes print field-path errors."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest
import yaml

from fathom_operator.validate import RecipeInvalid, load_recipe, validate_document
from tests.support.helpers import EXAMPLE_FILES, example, stage_index


def fathom(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fathom_operator.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_examples_validate_and_print_the_plan(path):
    result = fathom("validate", str(path))
    assert result.returncode == 0, result.stderr
    recipe = load_recipe(path.read_text())
    assert f"{recipe.metadata.name}: valid - {len(recipe.spec.stages)} stages" in result.stdout
    for stage in recipe.spec.stages:
        assert f" {stage.name} " in result.stdout


def test_plan_orders_stages_after_their_inputs():
    out = fathom("validate", "manifests/examples/fathom-r1-14b-rs.yaml").stdout
    lines = [line.split()[:2] for line in out.splitlines()[1:] if line.strip()[:1].isdigit()]
    level = {name: int(depth.rstrip(".")) for depth, name in lines}
    assert level["corpus"] == 1 and level["difficulty"] == 2
    assert level["grpo-compress"] < level["sft-shortest"] < level["fathom-r1-14b-rs"] < level["eval"]
    assert level["solve"] < level["curriculum-set"] == level["rl-set"] == level["shortest-set"]


def _edit(name: str, change: Callable[[dict], None]) -> dict:
    doc = example(name)
    change(doc)
    return doc


def _stage(doc: dict, name: str) -> dict:
    return doc["spec"]["stages"][stage_index(doc, name)]


R1 = "fathom-r1-14b.yaml"
RS = "fathom-r1-14b-rs.yaml"
# (id, example, edit, expected error line)
BROKEN = [
    ("missing-stage-ref", R1, lambda d: _stage(d, "sft-curriculum").update(data="curriculum-sett"),
     'spec.stages[5].data: no stage named "curriculum-sett" (did you mean "curriculum-set"?)'),
    ("dataset-where-model-needed", R1, lambda d: _stage(d, "sft-shortest").update(model="shortest-set"),
     'spec.stages[6].model: stage "shortest-set" (curate) produces chains; expected model'),
    ("model-where-dataset-needed", R1, lambda d: _stage(d, "curriculum-set").update(data="sft-shortest"),
     'spec.stages[3].data: stage "sft-shortest" (sft) produces model; expected samples'),
    ("prompts-are-not-sft-data", RS, lambda d: _stage(d, "sft-curriculum").update(data="rl-set"),
     'spec.stages[7].data: stage "rl-set" (curate) produces prompts; expected chains'),
    ("cycle", R1, lambda d: _stage(d, "corpus").update(type="annotate", data="difficulty",
                                                          sources=None, decontaminate=None) or
     [_stage(d, "corpus").pop(k) for k in ("sources", "decontaminate")],
     "spec.stages[0].data: cycle: corpus -> difficulty -> corpus"),
    ("duplicate-name", R1, lambda d: _stage(d, "shortest-set").update(name="curriculum-set"),
     'spec.stages[4].name: duplicate stage name "curriculum-set" (first at spec.stages[3])'),
    ("non-dns-name", R1, lambda d: _stage(d, "eval").update(name="Eval_All"),
     "spec.stages[8].name: \"Eval_All\" is not a DNS-1123 label (lowercase letters, digits and '-', alphanumeric at both ends)"),
    ("name-too-long", R1, lambda d: _stage(d, "eval").update(name="e" * 41),
     f'spec.stages[8].name: "{"e" * 41}" is 41 characters; at most 40 so Job names <recipe>-<stage>-<attempt> fit in 63'),
    ("reserved-name", R1, lambda d: _stage(d, "eval").update(name="base"),
     'spec.stages[8].name: "base" is reserved for spec.baseModel'),
    ("unknown-pool", R1, lambda d: _stage(d, "sft-shortest").update(pool="h100s"),
     'spec.stages[6].pool: no node pool named "h100s" (did you mean "h100"?); expected one of cpu, h100'),
    ("inverted-solve-band", R1, lambda d: _stage(d, "curriculum-set").update(select={"solveRate": {"above": 0.7, "below": 0.2}}),
     "spec.stages[3].select.solveRate: empty band: lower bound 0.7 is not below upper bound 0.2"),
    ("solve-rate-out-of-range", R1, lambda d: _stage(d, "shortest-set").update(select={"solveRate": {"atLeast": 0.1, "atMost": 1.4}}),
     "spec.stages[4].select.solveRate.atMost: solve rates lie in [0, 1], got 1.4"),
    ("two-lower-bounds", R1, lambda d: _stage(d, "shortest-set").update(select={"solveRate": {"above": 0.1, "atLeast": 0.1}}),
     "spec.stages[4].select.solveRate: give one lower bound: above (exclusive) or atLeast (inclusive), not both"),
    ("difficulty-out-of-range", R1, lambda d: _stage(d, "curriculum-set").update(select={"difficulty": {"min": 11}}),
     "spec.stages[3].select.difficulty.min: difficulty is rated 1-10, got 11"),
    ("difficulty-inverted", R1, lambda d: _stage(d, "curriculum-set").update(select={"difficulty": {"min": 8, "max": 3}}),
     "spec.stages[3].select.difficulty: min 8 is above max 3"),
    ("negative-merge-weight", R1, lambda d: _stage(d, "fathom-r1-14b")["models"][1].update(weight=-0.5),
     "spec.stages[7].models[1].weight: linear merge weights must be >= 0, got -0.5"),
    ("zero-merge-weights", R1, lambda d: [m.update(weight=0) for m in _stage(d, "fathom-r1-14b")["models"]],
     "spec.stages[7].models: at least one weight must be above 0"),
    ("zero-gpus-per-node-on-shards", R1, lambda d: _stage(d, "solve").update(shards=0),
     "spec.stages[2].shards: Input should be greater than 0, got 0"),
    ("zero-nodes", R1, lambda d: _stage(d, "sft-shortest").update(nodes=0),
     "spec.stages[6].nodes: Input should be greater than 0, got 0"),
    ("more-gpus-than-the-node", R1, lambda d: _stage(d, "sft-curriculum").update(gpusPerNode=16),
     'spec.stages[5].gpusPerNode: 16 GPUs per pod, but pool "h100" nodes have 8'),
    ("vllm-on-cpu", R1, lambda d: _stage(d, "solve").update(pool="cpu"),
     'spec.stages[2].engine: vLLM needs GPUs, but the stage has none (pool "cpu"); use the transformers engine or a GPU pool'),
    ("shards-on-training", R1, lambda d: _stage(d, "sft-curriculum").update(shards=2),
     "spec.stages[5].shards: only sampling stages (annotate, eval, solve-rate) are sharded"),
    ("nodes-on-sampling", R1, lambda d: _stage(d, "eval").update(nodes=2),
     "spec.stages[8].nodes: only training stages (grpo, sft) span nodes"),
    ("unknown-stage-type", R1, lambda d: _stage(d, "eval").update(type="evaluate"),
     'spec.stages[8].type: unknown stage type "evaluate"; expected one of prepare, annotate, solve-rate, curate, grpo, sft, merge, eval'),
    ("unknown-field", R1, lambda d: _stage(d, "sft-shortest").update(maxLenght=16384),
     'spec.stages[6].maxLenght: unknown field "maxLenght"'),
    ("wrong-type", R1, lambda d: _stage(d, "eval").update(samples="lots"),
     "spec.stages[8].samples: Input should be a valid integer, unable to parse string as an integer, got 'lots'"),
    ("unknown-benchmark", R1, lambda d: _stage(d, "eval").update(benchmarks=["aime25", "hmmt26"]),
     'spec.stages[8].benchmarks[1]: unknown benchmark "hmmt26" (did you mean "hmmt25"?); expected one of '
     "aime25, hmmt25, gpqa-diamond, aime24, amc23, gsm8k-sample or a store URI"),
    ("bad-storage-scheme", R1, lambda d: d["spec"]["storage"].update(uri="gs://bucket"),
     "spec.storage.uri: expected a URI starting with s3:// or file://, got 'gs://bucket'"),
    ("bad-model-uri", R1, lambda d: _stage(d, "sft-curriculum").update(model="gs://models/x"),
     "spec.stages[5].model: expected a URI starting with s3:// or file:// or hf://, got 'gs://models/x'"),
    ("missing-base-model", R1, lambda d: d["spec"].pop("baseModel"),
     "spec.baseModel: required field is missing"),
    ("negative-budget", R1, lambda d: d["spec"].update(budgetUSD=-5),
     "spec.budgetUSD: Input should be greater than 0, got -5"),
    ("grpo-batch-not-divisible", RS, lambda d: _stage(d, "grpo-compress").update(numGenerations=6),
     "spec.stages[5].numGenerations: the generation batch (perDeviceBatchSize 1 x 16 processes x "
     "gradientAccumulationSteps 8 = 128) must be divisible by numGenerations 6"),
    ("bad-secret-name", R1, lambda d: d["spec"]["storage"].update(credentialsSecret="S3_Creds"),
     "spec.storage.credentialsSecret: 'S3_Creds' is not a valid Secret name (DNS-1123 subdomain)"),
    ("bad-stage-queue", R1, lambda d: _stage(d, "sft-shortest").update(queueName="GPU_Queue"),
     "spec.stages[6].queueName: 'GPU_Queue' is not a LocalQueue name (DNS-1123 subdomain of at most 63 "
     "characters: it is a label value)"),
    ("grace-period-over-a-day", R1, lambda d: _stage(d, "sft-shortest").update(terminationGracePeriodSeconds=90000),
     "spec.stages[6].terminationGracePeriodSeconds: Input should be less than or equal to 86400, got 90000"),
    ("bad-topology-level", R1, lambda d: d["spec"]["nodePools"]["h100"].update(topology={"level": "a rack"}),
     "spec.nodePools.h100.topology.level: 'a rack' is not a node label key (a level of the Kueue Topology, "
     "e.g. cloud.provider.com/topology-rack)"),
    ("wrong-api-version", R1, lambda d: d.update(apiVersion="fathom.dev/v1"),
     "apiVersion: expected fathom.dev/v1alpha1, got 'fathom.dev/v1'"),
    ("wrong-kind", R1, lambda d: d.update(kind="Recipe"),
     "kind: expected FathomRecipe, got 'Recipe'"),
    ("merge-one-model", R1, lambda d: _stage(d, "fathom-r1-14b")["models"].pop(),
     "spec.stages[7].models: List should have at least 2 items after validation, not 1"),
    ("negative-estimate-hint", R1, lambda d: _stage(d, "corpus").update(estimate={"problems": -5}),
     "spec.stages[0].estimate.problems: Input should be greater than or equal to 0, got -5"),
    ("model-info-wrong-type", R1, lambda d: d["spec"].update(modelInfo={
        "layers": "many", "hiddenSize": 5120, "attentionHeads": 40, "vocabSize": 152064, "intermediateSize": 13824}),
     "spec.modelInfo.layers: Input should be a valid integer, unable to parse string as an integer, got 'many'"),
    ("grpo-vllm-tp-not-dividing", RS, lambda d: _stage(d, "grpo-compress").update(vllmTensorParallelSize=3),
     "spec.stages[5].vllmTensorParallelSize: 3 does not divide the pod's 8 GPUs"),
    ("grpo-vllm-too-small", RS, lambda d: _stage(d, "grpo-compress").update(
        vllmGpuMemoryUtilization=0.3, vllmEnableSleepMode=False),
     "spec.stages[5].vllmGpuMemoryUtilization: GRPO colocated vLLM gets 24.0 GB (0.3 × 80 GB) for 29.5 GB of "
     "weights + 1.2 GB KV cache of one 6,200-token sequence + 1.5 GB overhead; set vllmGpuMemoryUtilization ≥ 0.45 "
     "or vllmTensorParallelSize: 2"),
]


def test_an_unknown_gpu_product_is_a_warning_not_an_error(tmp_path):
    doc = example("fathom-r1-14b.yaml")
    doc["spec"]["nodePools"]["h100"]["nodeSelector"]["nvidia.com/gpu.product"] = "NVIDIA-Z900"
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(doc))
    done = fathom("validate", str(path))
    assert done.returncode == 0
    assert "warning: pool \"h100\": unknown GPU product 'NVIDIA-Z900'; assuming NVIDIA-H100-80GB-HBM3" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("case_id,name,edit,expected", BROKEN, ids=[c[0] for c in BROKEN])
def test_broken_recipe_reports_the_field(case_id, name, edit, expected):
    doc = _edit(name, edit)
    with pytest.raises(RecipeInvalid) as info:
        validate_document(doc)
    lines = [str(e) for e in info.value.errors]
    assert expected in lines, "\n".join(lines)


@pytest.mark.parametrize("case_id,name,edit,expected", BROKEN[::6], ids=[c[0] for c in BROKEN[::6]])
def test_cli_prints_errors_and_exits_1_without_traceback(tmp_path, case_id, name, edit, expected):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_edit(name, edit)))
    result = fathom("validate", str(path))
    assert result.returncode == 1
    assert expected in result.stderr.splitlines()
    assert "Traceback" not in result.stderr + result.stdout


def test_every_error_is_reported_not_just_the_first():
    doc = example(R1)
    _stage(doc, "eval").update(name="Eval")
    _stage(doc, "sft-shortest").update(pool="gpu")
    with pytest.raises(RecipeInvalid) as info:
        validate_document(doc)
    paths = {e.path for e in info.value.errors}
    assert {"spec.stages[8].name", "spec.stages[6].pool"} <= paths


@pytest.mark.parametrize("text,expected", [
    ("spec: [unclosed\n", "recipe.yaml: line 2, column 1: malformed YAML: expected ',' or ']', but got '<stream end>'"),
    ("", "recipe.yaml: empty document; expected one FathomRecipe"),
    ("a: 1\n---\nb: 2\n", "recipe.yaml: 2 documents; expected exactly one FathomRecipe per file"),
    ("- just\n- a list\n", "recipe.yaml: expected a mapping (a FathomRecipe), got list"),
])
def test_unreadable_documents_get_clear_errors(tmp_path, text, expected):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    result = fathom("validate", str(path))
    assert result.returncode == 1
    assert result.stderr.strip().replace(str(path), "recipe.yaml") == expected
    assert "Traceback" not in result.stderr


def test_missing_file_is_a_clear_error(tmp_path):
    result = fathom("validate", str(tmp_path / "nope.yaml"))
    assert result.returncode == 1
    assert "cannot read" in result.stderr and "Traceback" not in result.stderr


def test_curate_presets_carry_the_seeds_bands():
    recipe = load_recipe((EXAMPLE_FILES[0].parent / R1).read_text())
    curriculum = next(s for s in recipe.spec.stages if s.name == "curriculum-set").effective()
    assert curriculum.select.difficulty.min == 5
    assert (curriculum.select.solve_rate.above, curriculum.select.solve_rate.below) == (0.2, 0.6)
    assert curriculum.order == "easy-to-hard"
    shortest = next(s for s in recipe.spec.stages if s.name == "shortest-set").effective()
    assert (shortest.select.solve_rate.at_least, shortest.select.solve_rate.at_most) == (0.1, 0.4)
    assert shortest.keep == "shortest-correct-chain"


def test_storage_and_pools_may_come_from_operator_defaults(tmp_path):
    doc = example(R1)
    pools = doc["spec"].pop("nodePools")
    storage = doc["spec"].pop("storage")
    with pytest.raises(RecipeInvalid) as info:
        validate_document(doc)
    assert [str(e) for e in info.value.errors] == [
        "spec.storage: required: where stage outputs go (no operator default is configured)",
        "spec.nodePools: required: at least one node pool (no operator default is configured)",
    ]
    defaults = {"storage": {**storage, "uri": "s3://team-default"}, "nodePools": pools,
                "images": {"train": "registry.example/train:1"},
                "policy": {"secretNames": ["hf-token", "openai"]}}  # the admin's policy comes with the defaults
    recipe = validate_document(doc, defaults)
    assert recipe.spec.storage.uri == "s3://team-default" and recipe.spec.images.train == "registry.example/train:1"
    doc["spec"]["storage"] = {"uri": "s3://mine"}
    assert validate_document(doc, defaults).spec.storage.uri == "s3://mine"

    recipe_file, defaults_file = tmp_path / "r.yaml", tmp_path / "defaults.json"
    recipe_file.write_text(yaml.safe_dump(doc))
    defaults_file.write_text(__import__("json").dumps(defaults))
    assert fathom("validate", str(recipe_file)).returncode == 1
    assert fathom("validate", str(recipe_file), "--defaults", str(defaults_file)).returncode == 0
