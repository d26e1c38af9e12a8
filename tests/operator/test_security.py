"""Safe in a shared cluster (docs/security.md): the regressions of issue 14, one test per defect.

Pure layers here (validate, render, plan, store reader); the same defects against the real operator
and kmock are in test_operator_security.py. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from fathom_jobs.__main__ import load_job_spec
from fathom_operator import plan as planning
from fathom_operator.cost import rounded
from fathom_operator.local import expand_env
from fathom_operator.observe import observe_job, observe_pod
from fathom_operator.render import job_name, render_stage, resolved_params, stage_by_name
from fathom_operator.store_reader import Read, StoreReader
from fathom_operator.validate import RecipeInvalid, load_recipe, validate_document
from tests.support.helpers import example
from tests.support.kubelet import container_environment, expand, mapping_func_for
from tests.support.pod_security import restricted_violations
from tests.support.tripwire import tripwire, url

T0 = datetime(2026, 3, 1, tzinfo=UTC)
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def errors_of(doc: dict, defaults: dict | None = None) -> list[str]:
    with pytest.raises(RecipeInvalid) as info:
        validate_document(doc, defaults)
    return [str(e) for e in info.value.errors]


def small(name: str = "r", **spec) -> dict:
    doc = {"apiVersion": "fathom.dev/v1alpha1", "kind": "FathomRecipe", "metadata": {"name": name},
           "spec": {"baseModel": "hf://org/base", "storage": {"uri": "s3://runs"}, "cache": False,
                    "nodePools": {"gpu": {"gpusPerNode": 8, "gpuHourUSD": 2.0}, "cpu": {"cpuHourUSD": 0.05}},
                    "stages": [{"name": "corpus", "type": "prepare", "pool": "cpu", "sources": [{"uri": "aime24"}]}]}}
    doc["spec"].update(spec)
    return doc


# -- names that cannot collide, ownership that cannot be confused --------------------------------

def test_the_collision_pair_gets_different_names_for_jobs_and_services():
    assert f"{'a-b'}-{'c'}-0" == f"{'a'}-{'b-c'}-0"  # the plain form reads two ways
    first, second = job_name("a-b", "c", 0), job_name("a", "b-c", 0)
    assert first != second and first.startswith("a-b-") and second.startswith("a-")
    assert first.endswith("-c-0") and second.endswith("-b-c-0")
    # Unambiguous names stay plain and readable; a plain name has exactly two '-', a hashed one more.
    assert job_name("r", "corpus", 0) == "r-corpus-0"
    # Multi-node stages: the Services differ too.
    for recipe_name, stage in (("a-b", "c"), ("a", "b-c")):
        doc = small(recipe_name, stages=[{"name": stage, "type": "sft", "pool": "gpu", "nodes": 2,
                                          "data": "s3://runs/chains/"}])
        job, service = render_stage(validate_document(doc), stage, 0, namespace="ml",
                                    owner={"uid": f"uid-{recipe_name}"})
        assert len(job["metadata"]["name"]) <= 61 and service["metadata"]["name"][0].isalpha()
    names = {render_stage(validate_document(small(r, stages=[{"name": s, "type": "sft", "pool": "gpu", "nodes": 2,
                                                               "data": "s3://runs/chains/"}])), s, 0)[1]["metadata"]["name"]
             for r, s in (("a-b", "c"), ("a", "b-c"))}
    assert len(names) == 2


def test_names_are_unique_per_recipe_uid_and_stay_readable_and_short():
    a, b = job_name("fathom-r1-14b", "sft-shortest", 1, uid="uid-1"), job_name("fathom-r1-14b", "sft-shortest", 1, uid="uid-2")
    assert a != b and a.startswith("fathom-r1-14b-") and a.endswith("-sft-shortest-1")
    long = "r" * 30 + "-" + "x" * 32  # 63 characters, the longest recipe name the operator runs
    for attempt in (0, 7, 12345):
        name = job_name(long, "e" * 40, attempt, 63 - 5, uid="u")
        assert len(name) <= 58 and name.endswith(f"-{'e' * 40}-{attempt}")
    assert job_name("a.b", "c", 0) != job_name("a-b", "c", 0)  # '.' cannot stand in for '-'


def _sim_inputs(spec: dict, uid: str, jobs: list, pods: list, status=None, conflicts=None) -> planning.Inputs:
    return planning.Inputs(name="r", namespace="ml", uid=uid, generation=1,
                           parsed=planning.parse("r", "ml", copy.deepcopy(spec)), status=status, jobs=jobs, pods=pods,
                           facts={}, now=T0 + timedelta(hours=5), conflicts=conflicts or {})


def _finished_job(owner_uid: str, hours: float = 2.0) -> tuple[dict, dict]:
    """Job r-corpus-0 of the recipe with owner_uid, succeeded after `hours` on 4 CPUs."""
    objects = render_stage(validate_document(small()), "corpus", 0, namespace="ml",
                           owner={"apiVersion": "fathom.dev/v1alpha1", "kind": "FathomRecipe", "name": "r",
                                  "uid": owner_uid, "controller": True})
    job = objects[0]
    parsed = planning.parse("r", "ml", small()["spec"])
    job["metadata"]["annotations"]["fathom.dev/fingerprint"] = parsed.fingerprints["corpus"]
    end = (T0 + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")
    job["status"] = {"startTime": "2026-03-01T00:00:00Z", "completionTime": end,
                     "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": end}]}
    pod = {"metadata": {"name": "r-corpus-0-x", "labels": {**job["spec"]["template"]["metadata"]["labels"],
                                                            "batch.kubernetes.io/job-name": "r-corpus-0"}},
           "spec": job["spec"]["template"]["spec"],
           "status": {"phase": "Succeeded", "startTime": "2026-03-01T00:00:00Z", "containerStatuses": [
               {"name": "stage", "state": {"terminated": {"exitCode": 0, "finishedAt": end}}}]}}
    return job, pod


def test_a_recreated_recipe_never_adopts_the_old_ones_jobs_or_cost():
    job, pod = _finished_job("uid-old")
    spec = small()["spec"]
    mine = planning.plan(_sim_inputs(spec, "uid-old", [observe_job(job)], [observe_pod(pod)]))
    assert mine.status["stages"]["corpus"]["phase"] == "Succeeded" and mine.status["cost"]["usd"] > 0
    again = planning.plan(_sim_inputs(spec, "uid-new", [observe_job(job)], [observe_pod(pod)]))
    corpus = again.status["stages"]["corpus"]
    assert corpus["phase"] != "Succeeded" and again.status["cost"]["usd"] == 0 and not corpus.get("history")
    assert any("not owned by it" in w for w in again.warnings)
    # It would create its own Job; the old one's name is refused by the API server (409) and is not ours:
    taken = "Job r-corpus-0 already exists and belongs to another object (controller uid uid-old)"
    blocked = planning.plan(_sim_inputs(spec, "uid-new", [observe_job(job)], [observe_pod(pod)],
                                        conflicts={"r-corpus-0": taken}))
    assert blocked.create == [] and blocked.status["stages"]["corpus"]["phase"] == "Failed"
    assert blocked.status["stages"]["corpus"]["message"] == taken
    assert not [e for e in blocked.events if e.reason == "JobCreated"]
    assert ("Warning", "StageFailed") in {(e.type, e.reason) for e in blocked.events}


def test_a_hyphenated_recreated_recipe_gets_names_of_its_own():
    spec = small("team-r")["spec"]
    first = planning.parse("team-r", "ml", spec)
    one = render_stage(first.recipe, "corpus", 0, owner={"uid": "uid-1"})[0]["metadata"]["name"]
    two = render_stage(first.recipe, "corpus", 0, owner={"uid": "uid-2"})[0]["metadata"]["name"]
    assert one != two


# -- no expansion of recipe text ------------------------------------------------------------------

PROMPT = "Rate $(AWS_SECRET_ACCESS_KEY) and $$x^2$$ for {problem}; $(HOME) $( $$$ end$"


def test_recipe_text_reaches_the_job_exactly_as_the_operator_fingerprinted_it(monkeypatch):
    doc = example("fathom-r1-14b.yaml")
    annotate = next(st for st in doc["spec"]["stages"] if st["type"] == "annotate")
    sampler = next(st for st in doc["spec"]["stages"] if st["type"] == "solve-rate")
    annotate["prompt"] = PROMPT
    sampler["systemPrompt"] = "Use $$\\boxed{}$$ $(OPENAI_API_KEY)"
    recipe = validate_document(doc)
    secrets = {"s3-credentials": {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": SECRET},
               "hf-token": {"HF_TOKEN": "hf_example"}, "openai": {"OPENAI_API_KEY": "sk-example"}}
    for stage in (annotate["name"], sampler["name"]):
        job = render_stage(recipe, stage, 0, namespace="ml")[0]
        container = job["spec"]["template"]["spec"]["containers"][0]
        env = container_environment(container, secrets)  # what the kubelet hands the process
        mine = {e["name"] for e in container["env"]}
        assert not [k for k in mine if SECRET in env[k] or "sk-example" in env[k]]  # no Secret reached our vars
        monkeypatch.setenv("FATHOM_JOB_SPEC", env["FATHOM_JOB_SPEC"])
        parsed = load_job_spec(stage_by_name(recipe.spec, stage).type, None)
        # Exactly the parameters the operator fingerprints and memo-checks (render.resolved_params).
        assert parsed.params == resolved_params(recipe.spec, "ml", recipe.metadata.name, stage_by_name(recipe.spec, stage))
        every = {k: v for s in secrets.values() for k, v in s.items()}
        assert {k: env[k] for k in mine} == expand_env(container["env"], every)  # the local runner agrees
    assert parsed.params["systemPrompt"] == "Use $$\\boxed{}$$ $(OPENAI_API_KEY)"
    difficulty = render_stage(recipe, annotate["name"], 0)[0]["spec"]["template"]["spec"]["containers"][0]
    spec_text = container_environment(difficulty, secrets)["FATHOM_JOB_SPEC"]
    assert json.loads(spec_text)["params"]["prompt"] == PROMPT


def test_the_kubelet_oracle_does_what_kubernetes_does():
    known = mapping_func_for({"A": "1", "B": "$(A)"})
    cases = {"$(A)": "1", "$$(A)": "$(A)", "$$": "$", "$(C)": "$(C)", "$(B)": "$(A)", "x$": "x$", "$(A": "$(A",
             "$x": "$x", "$$$(A)": "$1", "a$(A)b$(C)": "a1b$(C)", "é$(A)": "é1", "": ""}
    for text, want in cases.items():
        assert expand(text, known) == want, text
    # Unescaped recipe text would have leaked the Secret: the reason every $ is doubled.
    assert expand("key: $(AWS_SECRET_ACCESS_KEY)", mapping_func_for({"AWS_SECRET_ACCESS_KEY": SECRET})) == f"key: {SECRET}"
    for text in [PROMPT, "$", "$$", "$(", "$()", "a$$(B)b", "$$$$(A)$"]:
        assert expand(text.replace("$", "$$"), known) == text
        assert expand_env([{"name": "X", "value": text.replace("$", "$$")}], {"A": "1"})["X"] == text


# -- storage endpoints under the admin's control ------------------------------------------------

def test_an_endpoint_outside_the_allow_list_is_invalid_and_never_contacted(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAOPERATOROWNKEY00")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    with tripwire() as server:
        defaults = {"storage": {"uri": "s3://runs", "endpoint": "http://127.0.0.1:9"}, "policy": {}}
        doc = small(storage={"uri": "s3://runs", "endpoint": url(server)})
        problems = errors_of(doc, defaults)
        assert any(p.startswith("spec.storage.endpoint: ") and "not an endpoint the operator may use" in p
                   for p in problems), problems
        assert isinstance(planning.parse("r", "ml", doc["spec"], defaults), list)
        # Defence in depth: even a read asked for directly is refused before any connection.
        reader = StoreReader(allowed_endpoints={"http://127.0.0.1:9"})
        storage = {"endpoint": url(server), "pathStyle": True}
        for kind, args in (("memo", {"stage_type": "prepare", "params": {}, "image": "i", "output": "s3://runs/ml/r/corpus/"}),
                           ("progress", {"output": "s3://runs/ml/r/corpus/"}),
                           ("metrics", {"output": "s3://runs/ml/r/corpus/"}),
                           ("checkpoint", {"output": "s3://runs/ml/r/corpus/", "not_before": None})):
            fact = reader.read(Read(kind, "corpus", "k", {**args, "storage": storage}), T0)
            assert fact.error and "not allowed" in fact.error
        # Listed, it is allowed (and only then would the operator talk to it).
        allowed = {**defaults, "policy": {"storageEndpoints": [url(server) + "/"]}}
        assert validate_document(doc, allowed).spec.storage.endpoint == url(server)
        assert server.requests == []


def test_the_default_allow_list_is_the_configured_default_endpoint_only():
    defaults = {"storage": {"uri": "s3://runs", "endpoint": "https://minio.example:9000"}}
    assert validate_document(small(storage={"uri": "s3://xy", "endpoint": "HTTPS://minio.example:9000/"}), defaults)
    assert validate_document(small(storage={"uri": "s3://xy"}), defaults)  # the operator's own endpoint
    assert any(p.startswith("spec.storage.endpoint") for p in
               errors_of(small(storage={"uri": "s3://xy", "endpoint": "https://evil.example"}), defaults))
    # Without a defaults file there is no admin (fathom validate, fathom run --local): nothing to enforce.
    assert validate_document(small(storage={"uri": "s3://xy", "endpoint": "https://any.example"}))


# -- admin policy ------------------------------------------------------------------------------

POLICY_CASES = [
    ("service-account", lambda d: d["spec"].update(serviceAccountName="cluster-admin-sa"),
     "spec.serviceAccountName: 'cluster-admin-sa' is not allowed"),
    ("image", lambda d: d["spec"]["stages"][0].update(image="evil.example/miner:1"),
     "spec.stages[0].image: 'evil.example/miner:1' is not allowed"),
    ("family-image", lambda d: d["spec"].update(images={"data": "registry.example/other/data:1"}),
     "spec.images.data: 'registry.example/other/data:1' is not allowed"),
    ("secret", lambda d: d["spec"].update(hfTokenSecret="payroll-db"),
     "spec.hfTokenSecret: Secret 'payroll-db' is not allowed"),
    ("storage-secret", lambda d: d["spec"]["storage"].update(credentialsSecret="other-team-s3"),
     "spec.storage.credentialsSecret: Secret 'other-team-s3' is not allowed"),
    ("toleration", lambda d: d["spec"]["nodePools"]["cpu"].update(
        tolerations=[{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]),
     "spec.nodePools.cpu.tolerations[0]: recipes may not tolerate 'node-role.kubernetes.io/control-plane'"),
    ("affinity", lambda d: d["spec"]["nodePools"]["cpu"].update(affinity={"nodeAffinity": {}}),
     "spec.nodePools.cpu.affinity: recipes may not set affinity"),
]
POLICY = {"serviceAccountName": "fathom-jobs", "policy": {
    "serviceAccounts": ["fathom-jobs-big"], "imagePrefixes": ["registry.example/fathom/"],
    "secretNames": ["s3-credentials"], "secretPrefix": "team-a-", "tolerationKeys": ["nvidia.com/gpu"]}}


@pytest.mark.parametrize("case_id,edit,expected", POLICY_CASES, ids=[c[0] for c in POLICY_CASES])
def test_the_admin_policy_bounds_what_a_recipe_puts_in_its_pods(case_id, edit, expected):
    doc = small()
    edit(doc)
    problems = errors_of(doc, POLICY)
    assert any(p.startswith(expected) for p in problems), problems
    validate_document(doc)  # without an admin, the same recipe is fine


def test_what_the_policy_allows_passes_and_the_default_service_account_is_filled_in():
    doc = small(serviceAccountName="fathom-jobs-big", hfTokenSecret="team-a-hf",
                images={"data": "registry.example/fathom/data:2"})
    doc["spec"]["storage"]["credentialsSecret"] = "s3-credentials"
    doc["spec"]["nodePools"]["gpu"]["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    assert validate_document(doc, POLICY).spec.service_account_name == "fathom-jobs-big"
    assert validate_document(small(), POLICY).spec.service_account_name == "fathom-jobs"
    job = render_stage(validate_document(small(), POLICY), "corpus", 0)[0]
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "fathom-jobs"
    # An admin's own node pool may carry what recipes may not.
    admin_pool = {**POLICY, "nodePools": {"infra": {"tolerations": [{"key": "dedicated", "operator": "Exists"}],
                                                    "cpuHourUSD": 0.1}}}
    validate_document(small(stages=[{"name": "corpus", "type": "prepare", "pool": "infra",
                                     "sources": [{"uri": "aime24"}]}]), admin_pool)


def test_a_malformed_policy_is_an_error_not_a_crash():
    assert errors_of(small(), {"policy": {"secretNames": "all"}})[0].startswith("defaults.policy: ")
    assert errors_of(small(), {"policy": {"bogus": 1}})[0].startswith("defaults.policy: ")


# -- validation that matches the API server --------------------------------------------------------

def _stage0(d: dict) -> dict:
    return d["spec"]["stages"][0]


VALIDATION = [
    ("trailing-newline-stage", lambda d: _stage0(d).update(name="corpus\n"), "spec.stages[0].name"),
    ("trailing-newline-secret", lambda d: d["spec"].update(hfTokenSecret="hf-token\n"), "spec.hfTokenSecret"),
    ("trailing-newline-recipe", lambda d: d["metadata"].update(name="r\n"), "metadata.name"),
    ("queue-name", lambda d: d["spec"].update(queueName="Team A!"), "spec.queueName"),
    ("service-account", lambda d: d["spec"].update(serviceAccountName="x" * 300), "spec.serviceAccountName"),
    ("image", lambda d: _stage0(d).update(image="bad image\n"), "spec.stages[0].image"),
    ("node-selector-key", lambda d: d["spec"]["nodePools"]["cpu"].update(nodeSelector={"bad key!": "x"}),
     "spec.nodePools.cpu.nodeSelector"),
    ("node-selector-value", lambda d: d["spec"]["nodePools"]["cpu"].update(nodeSelector={"pool": "a" * 64}),
     "spec.nodePools.cpu.nodeSelector.pool"),
    ("toleration-exists-with-value", lambda d: d["spec"]["nodePools"]["cpu"].update(
        tolerations=[{"key": "k", "operator": "Exists", "value": "v"}]), "spec.nodePools.cpu.tolerations[0].value"),
    ("toleration-seconds-int64", lambda d: d["spec"]["nodePools"]["cpu"].update(
        tolerations=[{"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2**63}]),
     "spec.nodePools.cpu.tolerations[0].tolerationSeconds"),
    ("shards", lambda d: _stage0(d).update(shards=100_001), "spec.stages[0].shards"),
    ("nodes", lambda d: _stage0(d).update(nodes=100_001), "spec.stages[0].nodes"),
    ("timeout-int64", lambda d: _stage0(d).update(timeoutSeconds=2**64), "spec.stages[0].timeoutSeconds"),
    ("nan", lambda d: d["spec"]["nodePools"]["cpu"].update(cpuHourUSD=float("nan")), "spec.nodePools.cpu.cpuHourUSD"),
    ("infinity-string", lambda d: d["spec"].update(budgetUSD="Infinity"), "spec.budgetUSD"),
    ("gpu-resource-memory", lambda d: d["spec"]["nodePools"]["gpu"].update(gpuResource="memory"),
     "spec.nodePools.gpu.gpuResource"),
    ("gpu-resource-cpu", lambda d: d["spec"]["nodePools"]["gpu"].update(gpuResource="cpu"), "spec.nodePools.gpu.gpuResource"),
    ("gpu-resource-native", lambda d: d["spec"]["nodePools"]["gpu"].update(gpuResource="kubernetes.io/batch"),
     "spec.nodePools.gpu.gpuResource"),
    ("memory-quantity", lambda d: _stage0(d).update(resources={"memory": "9e99"}), "spec.stages[0].resources.memory"),
    ("credentials-in-storage-uri", lambda d: d["spec"]["storage"].update(uri=f"s3://AKIAEXAMPLEKEY:{SECRET}@bucket"),
     "spec.storage.uri"),
    ("credentials-in-endpoint", lambda d: d["spec"]["storage"].update(endpoint="https://user:pass@minio.example"),
     "spec.storage.endpoint"),
    ("credentials-in-model", lambda d: d["spec"].update(baseModel="s3://KEY:SECRET@models/x"), "spec.baseModel"),
    ("huge-price", lambda d: d["spec"]["nodePools"]["cpu"].update(cpuHourUSD=1e26), "spec.nodePools.cpu.cpuHourUSD"),
    ("huge-budget", lambda d: d["spec"].update(budgetUSD=1e30), "spec.budgetUSD"),
    ("too-many-stages", lambda d: d["spec"].update(stages=[
        {"name": f"s{i}", "type": "curate", "data": f"s{i - 1}" if i else "s3://b/x/", "pool": "cpu",
         "preset": "curriculum"} for i in range(500)]), "spec.stages"),
]


@pytest.mark.parametrize("case_id,edit,path", VALIDATION, ids=[c[0] for c in VALIDATION])
def test_values_the_api_server_would_refuse_are_field_errors(case_id, edit, path):
    doc = small()
    edit(doc)
    problems = errors_of(doc)
    assert any(p.startswith(f"{path}: ") for p in problems), problems
    assert SECRET not in "\n".join(problems)  # redacted where a credential was echoed


def test_a_judge_endpoint_with_credentials_is_refused_and_never_echoed():
    doc = example("fathom-r1-14b.yaml")
    doc["spec"]["stages"][1]["judge"]["endpoint"] = f"https://user:{SECRET}@api.example/v1"
    problems = errors_of(doc)
    assert "spec.stages[1].judge.endpoint: credentials do not belong in a URL; put them in a Secret" in problems
    assert SECRET not in "\n".join(problems)


YAML_CASES = [
    ("deep", "spec: " + "[" * 500 + "]" * 500 + "\n", "nested deeper than 32 levels"),
    ("huge-int", "apiVersion: fathom.dev/v1alpha1\nkind: FathomRecipe\nmetadata: {name: r}\nspec: {budgetUSD: "
     + "9" * 5000 + "}\n", "spec.budgetUSD: integer of 5000 digits"),
    ("duplicate-key", "apiVersion: fathom.dev/v1alpha1\nkind: FathomRecipe\nmetadata: {name: r}\n"
     "spec:\n  budgetUSD: 10\n  budgetUSD: 10000000\n", 'spec.budgetUSD: duplicate key "budgetUSD"'),
    ("billion-laughs", "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n",
     "once its aliases are expanded"),
    ("recursive-alias", "a: &a [*a]\n", "recursive alias"),
    ("too-big", "a: '" + "x" * (1024 * 1024 + 1) + "'\n", "a recipe is at most"),
]


@pytest.mark.parametrize("case_id,text,expected", YAML_CASES, ids=[c[0] for c in YAML_CASES])
def test_yaml_that_would_crash_or_bloat_is_a_validation_error(case_id, text, expected):
    with pytest.raises(RecipeInvalid) as info:
        load_recipe(text)
    assert any(expected in str(e) for e in info.value.errors), info.value.errors


def test_a_long_chain_of_stages_is_walked_without_recursion():
    from fathom_operator import dag

    chain = {f"s{i}": [f"s{i - 1}"] if i else [] for i in range(20_000)}
    assert dag.find_cycle(chain) is None and len(dag.levels(chain)) == 20_000
    assert dag.downstream(chain, {"s0"}) == set(chain)
    chain["s0"] = ["s19999"]
    assert dag.find_cycle(chain)[0] == dag.find_cycle(chain)[-1]
    doc = small(stages=[{"name": f"s{i}", "type": "curate", "data": f"s{i - 1}" if i else "s3://b/x/", "pool": "cpu",
                         "preset": "curriculum"} for i in range(200)])
    doc["spec"]["stages"][0]["data"] = "s199"  # a 200-stage cycle
    assert any("cycle" in p for p in errors_of(doc))


# -- cost arithmetic cannot overflow, the planner never crash-loops ------------------------------

def test_cost_rounding_never_raises_and_prices_are_bounded():
    assert rounded(1e26 * 3.3, 4) == 3.3e26 and rounded(1.7e308) == 1.7e308
    doc = small()
    doc["spec"]["nodePools"]["cpu"]["cpuHourUSD"] = 1000.0  # the bound itself: a year of 4 CPUs plans fine
    job, pod = _finished_job("uid-1", hours=24 * 365)
    result = planning.plan(_sim_inputs(doc["spec"], "uid-1", [observe_job(job)], [observe_pod(pod)]))
    assert result.status["stages"]["corpus"]["costUSD"] == 4 * 24 * 365 * 1000.0


GARBAGE = [[], "garbage", 42, {"stages": []}, {"stages": "x"}, {"stages": {"corpus": "x"}},
           {"stages": {"corpus": {"phase": "Bogus", "attempts": -1}}}, {"conditions": "x", "cost": []},
           {"stages": {"corpus": {"history": "x"}}}, {"forecast": [1], "results": "x", "phase": 3}]


@pytest.mark.parametrize("status", GARBAGE, ids=range(len(GARBAGE)))
def test_a_garbage_status_is_treated_as_missing_and_said_once(status):
    result = planning.plan(_sim_inputs(small()["spec"], "uid-1", [], [], status=copy.deepcopy(status)))
    assert result.status["stages"]["corpus"]["phase"] in ("Pending", "Waiting") and result.warnings
    assert all("treated as missing" in w for w in result.warnings)


def test_readable_finished_attempts_survive_garbage_beside_them():
    record = {"attempt": 0, "job": "r-corpus-0", "outcome": "Failed", "costUSD": 1.5, "gpuHours": 0.0}
    status = {"stages": {"corpus": {"phase": ["not", "a", "phase"], "history": [record, "junk"]}}}
    result = planning.plan(_sim_inputs(small()["spec"], "uid-1", [], [], status=status))
    assert result.status["stages"]["corpus"]["costUSD"] == 1.5


# -- redaction -------------------------------------------------------------------------------------

def test_credentials_in_termination_messages_never_reach_status_or_events():
    job, pod = _finished_job("uid-1")
    job["status"] = {"startTime": "2026-03-01T00:00:00Z", "conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "lastTransitionTime": "2026-03-01T01:00:00Z"}]}
    message = (f"openai.AuthenticationError: 401 for https://user:{SECRET}@judge.example/v1 "
               f"(AWS_SECRET_ACCESS_KEY={SECRET}, Authorization: Bearer sk-proj-abcdefghijklmnopqrstuvwx)")
    pod["status"] = {"phase": "Failed", "startTime": "2026-03-01T00:00:00Z", "containerStatuses": [{"name": "stage",
                     "state": {"terminated": {"exitCode": 1, "message": message, "finishedAt": "2026-03-01T01:00:00Z"}}}]}
    spec = small()["spec"]
    spec["stages"][0]["retries"] = 0
    result = planning.plan(_sim_inputs(spec, "uid-1", [observe_job(job)], [observe_pod(pod)]))
    shown = json.dumps(result.status) + json.dumps([e.message for e in result.events])
    assert result.status["stages"]["corpus"]["phase"] == "Failed" and "401" in shown
    for leaked in (SECRET, "sk-proj-abcdefghijklmnopqrstuvwx", "user:"):
        assert leaked not in shown


def test_an_invalid_recipe_condition_never_echoes_a_credential():
    doc = small(storage={"uri": f"s3://AKIAIOSFODNN7EXAMPLE:{SECRET}@bucket"})
    result = planning.plan(_sim_inputs(doc["spec"], "uid-1", [], []))
    text = yaml.safe_dump(result.status) + json.dumps([e.message for e in result.events])
    assert "InvalidSpec" in text and SECRET not in text and "AKIAIOSFODNN7EXAMPLE" not in text


# -- Pod Security "restricted" holds for every Job, whatever a recipe asks for -------------------

def test_every_rendered_job_meets_pod_security_restricted():
    from fathom_operator.render import render_recipe

    for name in ("fathom-r1-14b.yaml", "fathom-r1-14b-rs.yaml", "tiny-cpu.yaml"):
        doc = example(name)
        doc["spec"]["serviceAccountName"] = "fathom-jobs"
        doc["spec"]["queueName"] = "team-a"
        for obj in render_recipe(validate_document(doc), namespace="ml"):
            if obj["kind"] == "Job":
                assert restricted_violations(obj["spec"]["template"]["spec"]) == [], (name, obj["metadata"]["name"])


@pytest.mark.parametrize("metrics", [
    {"problems": -5, "meanTokens": "many"}, {"kept": 1e308, "rows": -1}, {"completionTokens": {"mean": -3}},
    {"problems": 2**80}, {"x": "y" * 70_000}, ["not", "a", "mapping"], "text",
], ids=range(7))
def test_whatever_a_job_writes_in_metrics_json_the_planner_keeps_going(metrics):
    from fathom_operator.store_reader import Fact

    job, pod = _finished_job("uid-1")
    spec = small()["spec"]
    parsed = planning.parse("r", "ml", copy.deepcopy(spec))
    facts = {("metrics", "corpus"): Fact(parsed.fingerprints["corpus"], {"metrics": metrics}, T0)}
    inputs = _sim_inputs(spec, "uid-1", [observe_job(job)], [observe_pod(pod)])
    result = planning.plan(dataclasses.replace(inputs, facts=facts))
    corpus = result.status["stages"]["corpus"]
    assert corpus["phase"] == "Succeeded" and len(json.dumps(result.status)) < 64 * 1024


def test_every_secret_a_stage_can_mount_is_under_the_policy():
    from fathom_operator.api.recipe import STAGE_MODELS

    doc = example("fathom-r1-14b.yaml")
    expected = []
    for i, stage in enumerate(doc["spec"]["stages"]):
        for name, field in STAGE_MODELS[stage["type"]].model_fields.items():
            if name.endswith("_secret"):
                stage[field.alias or name] = "payroll-db"
                expected.append(f"spec.stages[{i}].{field.alias or name}: Secret 'payroll-db' is not allowed")
    stage = next(s for s in doc["spec"]["stages"] if s["type"] == "annotate")
    stage["judge"]["apiKeySecret"] = "payroll-db"
    expected.append(f"spec.stages[{doc['spec']['stages'].index(stage)}].judge.apiKeySecret: Secret 'payroll-db'")
    problems = errors_of(doc, POLICY)
    for want in expected:
        assert any(p.startswith(want) for p in problems), (want, problems)
