"""The Helm chart: lint-clean, renders valid objects, least-privilege RBAC, install.yaml in sync."""

from __future__ import annotations

import sys

import helm_python
import kubernetes_validate
import pytest
import yaml

from tests.support.helpers import ROOT

CHART = ROOT / "charts" / "fathom-operator"
ALL_ON = yaml.safe_load((CHART / "ci" / "all-on-values.yaml").read_text())
K8S_VERSIONS = ["1.30.0", "1.33.0"]
# CRDs of other projects: kubernetes-validate only knows upstream kinds.
FOREIGN_KINDS = {"ServiceMonitor"}


def render(values: dict) -> list[dict]:
    rendered = helm_python.Chart.load(str(CHART)).render(values, name="fathom", namespace="fathom-system")
    return [doc for path, text in sorted(rendered.items()) if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]


def test_lint_strict_is_clean():
    report = helm_python.lint(str(CHART), strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("values", [{}, ALL_ON], ids=["defaults", "all-on"])
def test_rendered_objects_validate_strictly(values, version):
    objects = render(values)
    assert {o["kind"] for o in objects} >= {"Deployment", "ServiceAccount", "ClusterRole", "Service", "ConfigMap"}
    for obj in objects:
        if obj["kind"] in FOREIGN_KINDS:
            continue
        kubernetes_validate.validate(obj, version, strict=True)


def test_all_on_switches_on_monitoring_and_network_policy():
    kinds = [o["kind"] for o in render(ALL_ON)]
    assert "ServiceMonitor" in kinds and "NetworkPolicy" in kinds
    monitor = next(o for o in render(ALL_ON) if o["kind"] == "ServiceMonitor")
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert "ServiceMonitor" not in [o["kind"] for o in render({})]


def test_rbac_never_touches_secrets_and_stays_namespaced_by_default():
    for values in ({}, ALL_ON):
        for obj in render(values):
            for rule in obj.get("rules", []):
                assert "secrets" not in rule["resources"] and "*" not in rule["resources"] + rule["verbs"]
    default = render({})
    cluster_role = next(o for o in default if o["kind"] == "ClusterRole")
    assert {r for rule in cluster_role["rules"] for r in rule["resources"]} == {"customresourcedefinitions", "namespaces"}
    role = next(o for o in default if o["kind"] == "Role")
    assert role["metadata"]["namespace"] == "fathom-system"
    granted = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted[("", "pods")] == {"get", "list", "watch"}
    assert granted[("fathom.dev", "fathomrecipes/status")] == {"get", "patch"}
    assert "create" in granted[("batch", "jobs")]


def test_watched_namespaces_become_args_and_roles():
    objects = render({"watch": {"namespaces": ["team-a", "team-b"]}})
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args and "--all-namespaces" not in args
    assert sorted(o["metadata"]["namespace"] for o in objects if o["kind"] == "Role") == ["team-a", "team-b"]
    cluster_wide = next(o for o in render(ALL_ON) if o["kind"] == "Deployment")
    assert "--all-namespaces" in cluster_wide["spec"]["template"]["spec"]["containers"][0]["args"]


def test_defaults_reach_the_operator_as_json():
    objects = render(ALL_ON)
    config = next(o for o in objects if o["kind"] == "ConfigMap")
    defaults = yaml.safe_load(config["data"]["defaults.json"])
    assert defaults["nodePools"]["h100"]["gpuHourUSD"] == 2.83
    assert defaults["storage"]["uri"] == "s3://fathom-runs"


def test_chart_crd_is_the_generated_one():
    from fathom_operator.api.crd import custom_resource_definition

    crd = yaml.safe_load((CHART / "crds" / "fathomrecipes.fathom.dev.yaml").read_text())
    assert crd == custom_resource_definition()


def test_install_yaml_is_the_chart_rendered_with_defaults():
    sys.path.insert(0, str(ROOT / "tools"))
    from render_install import install_yaml

    committed = (ROOT / "manifests" / "install.yaml").read_text()
    assert committed == install_yaml(), "manifests/install.yaml drifted from the chart: run `make manifests`"


def test_the_admin_policy_reaches_the_operator_and_the_examples_pass_the_default_one():
    from fathom_operator.policy import policy_from_defaults
    from fathom_operator.validate import RecipeInvalid, validate_document
    from tests.support.helpers import example

    defaults = yaml.safe_load(next(o for o in render({}) if o["kind"] == "ConfigMap")["data"]["defaults.json"])
    policy = policy_from_defaults(defaults)
    assert policy is not None and policy.storage_endpoints == frozenset() and policy.service_accounts == {"default"}
    assert not policy.tolerations and not policy.affinity and policy.toleration_keys == {"nvidia.com/gpu"}
    for path in sorted((ROOT / "manifests" / "examples").glob("*.yaml")):  # the README's quickstart works
        validate_document(yaml.safe_load(path.read_text()), defaults)
    doc = example("fathom-r1-14b.yaml")
    doc["spec"]["serviceAccountName"] = "cluster-admin"
    with pytest.raises(RecipeInvalid, match="spec.serviceAccountName"):
        validate_document(doc, defaults)
    all_on = yaml.safe_load(next(o for o in render(ALL_ON) if o["kind"] == "ConfigMap")["data"]["defaults.json"])
    strict = policy_from_defaults(all_on)
    assert strict is not None and "https://s3.team-b.example" in strict.storage_endpoints
    assert strict.service_accounts == {"fathom-jobs", "fathom-jobs-gpu"} and strict.secret_prefix == "fathom-"


def test_the_operator_pod_meets_pod_security_restricted():
    from tests.support.pod_security import restricted_violations

    for values in ({}, ALL_ON):
        deployment = next(o for o in render(values) if o["kind"] == "Deployment")
        assert restricted_violations(deployment["spec"]["template"]["spec"]) == []


def test_probes_use_kopfs_liveness_endpoint_on_its_own_port():
    deployment = next(o for o in render({}) if o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "--liveness-port=8081" in container["args"] and "--metrics-port=8080" in container["args"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": 8080, "health": 8081}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["livenessProbe"]["failureThreshold"] == 3
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in container["env"]


def test_notification_webhooks_come_from_secrets_mounted_as_files():
    values = {"notifications": {"webhooks": [{"name": "ml-team", "secretName": "fathom-slack", "secretKey": "hook"},
                                             {"name": "oncall", "secretName": "pager"}]}}
    objects = render(values)
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSIONS[-1], strict=True)
    pod = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "--notifications-dir=/etc/fathom-notifications" in container["args"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["webhook-0"] == "/etc/fathom-notifications/ml-team"
    assert mounts["webhook-1"] == "/etc/fathom-notifications/oncall"
    volumes = {v["name"]: v.get("secret") for v in pod["volumes"]}
    assert volumes["webhook-0"] == {"secretName": "fathom-slack", "items": [{"key": "hook", "path": "url"}]}
    assert volumes["webhook-1"] == {"secretName": "pager", "items": [{"key": "url", "path": "url"}]}
    assert "fathom-slack" not in yaml.safe_dump(next(o for o in objects if o["kind"] == "ConfigMap"))
    default = next(o for o in render({}) if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert not any(v["name"].startswith("webhook-") for v in default["volumes"])
    assert not any(a.startswith("--notifications-dir") for a in default["containers"][0]["args"])
