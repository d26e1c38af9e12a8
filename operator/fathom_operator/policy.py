"""The cluster admin's policy: what a recipe may choose for the pods and the store (pure).

Recipe authors are not trusted (docs/security.md). Whatever lands in a pod or makes the operator
talk to a host is either the admin's (Helm values: `defaults`, `policy`) or allowed by `policy`:

- `storageEndpoints`: S3 endpoints a recipe may name in `spec.storage.endpoint` (the operator reads
  the store with its own credentials); the admin's `defaults.storage.endpoint` is always allowed;
- `serviceAccounts`: ServiceAccounts a recipe may name; the admin's `defaults.serviceAccountName`
  (or `default` when none is configured) is always allowed;
- `imagePrefixes`: images a recipe may name (`spec.images`, `stages[].image`); the operator's own
  images and the admin's `defaults.images` are always allowed;
- `secretNames` / `secretPrefix`: Secrets a recipe may mount (`envFrom`); the admin's own
  (`defaults.storage.credentialsSecret`, `defaults.hfTokenSecret`) are always allowed;
- `tolerations` / `tolerationKeys`, `affinity`: whether a recipe's own node pools may set
  tolerations (any, or only with these keys) and affinity. The admin's `defaults.nodePools` may;
- `queueNames`: the Kueue LocalQueues a recipe may name (`queueName`, per stage too); empty: any
  (LocalQueues live in the recipe's namespace, made by whoever runs it);
- `priorityClasses` / `workloadPriorityClasses`: the PriorityClasses and Kueue WorkloadPriorityClasses a
  recipe may name; empty: none. Both are cluster-wide: an author picking the highest class would
  preempt every other team's work;
- `maxTerminationGracePeriodSeconds`: the longest grace period a stage may ask for (a terminating pod
  holds its GPUs against preemption); absent: the schema's bound (a day). The operator's default
  (900 s for training stages) always may.

The policy is enforced whenever the operator has a defaults file (the Helm chart always mounts
one); `fathom validate --defaults FILE` applies the same rules. Without a defaults file (`fathom run
--local`, `fathom validate` alone) there is no admin and nothing beyond the schema is restricted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel

from fathom_jobs import registry

from .api.recipe import RecipeSpec
from .render import DEFAULT_IMAGE

POLICY_KEYS = frozenset({"storageEndpoints", "serviceAccounts", "imagePrefixes", "secretNames", "secretPrefix",
                         "tolerations", "tolerationKeys", "affinity", "queueNames", "priorityClasses",
                         "workloadPriorityClasses", "maxTerminationGracePeriodSeconds"})


@dataclass(frozen=True)
class Policy:
    storage_endpoints: frozenset[str] = frozenset()
    service_accounts: frozenset[str] = frozenset({"default"})
    images: frozenset[str] = frozenset()
    image_prefixes: tuple[str, ...] = ()
    secret_names: frozenset[str] = frozenset()
    secret_prefix: str = ""
    tolerations: bool = False
    toleration_keys: frozenset[str] = frozenset()
    affinity: bool = False
    queue_names: frozenset[str] = frozenset()  # empty: any LocalQueue of the recipe's namespace
    priority_classes: frozenset[str] = frozenset()
    workload_priority_classes: frozenset[str] = frozenset()
    max_grace_seconds: int | None = None

    def endpoint_allowed(self, endpoint: str | None) -> bool:
        """No endpoint = the operator's own (environment or AWS); any other must be listed."""
        return endpoint is None or normalize_endpoint(endpoint) in self.storage_endpoints

    def image_allowed(self, image: str) -> bool:
        return image in self.images or any(image.startswith(p) for p in self.image_prefixes)

    def secret_allowed(self, name: str) -> bool:
        return name in self.secret_names or bool(self.secret_prefix and name.startswith(self.secret_prefix))


def normalize_endpoint(endpoint: str) -> str:
    """`HTTPS://Host:443/` and `https://host:443` compare equal; the path is kept, minus a final /."""
    try:
        parts = urlsplit(endpoint.strip())
        host = (parts.hostname or "").lower()
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return endpoint
    return f"{parts.scheme.lower()}://{host}{port}{parts.path.rstrip('/')}"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _strings(raw: Mapping[str, Any], key: str) -> list[str]:
    value = raw.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"policy.{key} must be a list of non-empty strings")
    return list(value)


def _flag(raw: Mapping[str, Any], key: str) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"policy.{key} must be true or false")
    return value


def policy_from_defaults(defaults: Mapping[str, Any] | None) -> Policy | None:
    """The admin's policy from the operator's defaults file; None without one. ValueError if malformed."""
    if defaults is None:
        return None
    raw = defaults.get("policy") or {}
    if not isinstance(raw, Mapping):
        raise ValueError("policy must be a mapping")
    unknown = sorted(set(raw) - POLICY_KEYS)
    if unknown:
        raise ValueError(f"policy: unknown keys {', '.join(map(str, unknown))}; expected {', '.join(sorted(POLICY_KEYS))}")
    storage = _mapping(defaults.get("storage"))
    endpoints = set(_strings(raw, "storageEndpoints"))
    if isinstance(storage.get("endpoint"), str) and storage["endpoint"]:
        endpoints.add(storage["endpoint"])
    account = defaults.get("serviceAccountName")
    accounts = set(_strings(raw, "serviceAccounts")) | {account if isinstance(account, str) and account else "default"}
    images = {DEFAULT_IMAGE.format(family=family) for family in registry.FAMILIES}
    own_images = _mapping(defaults.get("images"))
    images |= {v for v in own_images.values() if isinstance(v, str) and v}
    secrets = set(_strings(raw, "secretNames"))
    for own in (storage.get("credentialsSecret"), defaults.get("hfTokenSecret")):
        if isinstance(own, str) and own:
            secrets.add(own)
    prefix = raw.get("secretPrefix") or ""
    if not isinstance(prefix, str):
        raise ValueError("policy.secretPrefix must be a string")
    grace = raw.get("maxTerminationGracePeriodSeconds")
    if grace is not None and (isinstance(grace, bool) or not isinstance(grace, int) or grace < 0):
        raise ValueError("policy.maxTerminationGracePeriodSeconds must be a number of seconds (0 or more)")
    return Policy(
        storage_endpoints=frozenset(normalize_endpoint(e) for e in endpoints),
        service_accounts=frozenset(accounts),
        images=frozenset(images),
        image_prefixes=tuple(_strings(raw, "imagePrefixes")),
        secret_names=frozenset(secrets),
        secret_prefix=prefix,
        tolerations=_flag(raw, "tolerations"),
        toleration_keys=frozenset(_strings(raw, "tolerationKeys")),
        affinity=_flag(raw, "affinity"),
        queue_names=frozenset(_strings(raw, "queueNames")),
        priority_classes=frozenset(_strings(raw, "priorityClasses")),
        workload_priority_classes=frozenset(_strings(raw, "workloadPriorityClasses")),
        max_grace_seconds=grace,
    )


def secret_fields(spec: RecipeSpec) -> list[tuple[str, str | None]]:
    """(field path, Secret name) of every Secret a recipe mounts: the storage and token Secrets and
    every stage field named `*Secret` (judge.apiKeySecret, wandbApiKeySecret, ...)."""
    found: list[tuple[str, str | None]] = [
        ("spec.storage.credentialsSecret", spec.storage.credentials_secret if spec.storage else None),
        ("spec.hfTokenSecret", spec.hf_token_secret)]
    for i, stage in enumerate(spec.stages):
        models: list[tuple[str, BaseModel]] = [(f"spec.stages[{i}]", stage)]
        while models:
            path, model = models.pop(0)
            for name, field in type(model).model_fields.items():
                value = getattr(model, name, None)
                key = f"{path}.{field.alias or name}"
                if name.endswith("_secret") and (value is None or isinstance(value, str)):
                    found.append((key, value))
                elif isinstance(value, BaseModel) and path.count(".") < 3:
                    models.append((key, value))
    return found


def _listing(values: Iterable[str], limit: int = 8) -> str:
    shown = sorted(values)
    more = f" and {len(shown) - limit} more" if len(shown) > limit else ""
    return ", ".join(shown[:limit]) + more if shown else "(none)"


def check_policy(policy: Policy, spec: RecipeSpec, raw_spec: Mapping[str, Any],
                 defaults: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field path, problem) for everything the recipe chose that the admin does not allow."""
    problems: list[tuple[str, str]] = []
    storage = spec.storage
    if storage is not None and not policy.endpoint_allowed(storage.endpoint):
        problems.append(("spec.storage.endpoint", f"{storage.endpoint!r} is not an endpoint the operator may use; "
                         f"allowed: {_listing(policy.storage_endpoints)} (Helm value policy.storageEndpoints)"))
    account = spec.service_account_name
    if account is not None and account not in policy.service_accounts:
        problems.append(("spec.serviceAccountName", f"{account!r} is not allowed; allowed: "
                         f"{_listing(policy.service_accounts)} (Helm value policy.serviceAccounts)"))
    why_images = f"allowed: prefixes {_listing(policy.image_prefixes)} and the operator's default images " \
                 "(Helm value policy.imagePrefixes)"
    for family in registry.FAMILIES:
        image = getattr(spec.images, family, None)
        if image and not policy.image_allowed(image):
            problems.append((f"spec.images.{family}", f"{image!r} is not allowed; {why_images}"))
    for i, stage in enumerate(spec.stages):
        if stage.image and not policy.image_allowed(stage.image):
            problems.append((f"spec.stages[{i}].image", f"{stage.image!r} is not allowed; {why_images}"))
    secrets = secret_fields(spec)
    why_secrets = (f"allowed: {_listing(policy.secret_names)}"
                   + (f" and names starting with {policy.secret_prefix!r}" if policy.secret_prefix else "")
                   + " (Helm values policy.secretNames, policy.secretPrefix)")
    for path, name in secrets:
        if name and not policy.secret_allowed(name):
            problems.append((path, f"Secret {name!r} is not allowed; {why_secrets}"))
    problems += _check_placement_policy(policy, spec)
    admin_pools = _mapping(defaults.get("nodePools"))
    own_pools = _mapping(raw_spec.get("nodePools"))
    for name, raw_pool in own_pools.items():
        pool = spec.node_pools.get(name)
        if pool is None or not isinstance(raw_pool, Mapping):
            continue
        admin = _mapping(admin_pools.get(name))
        tolerations = [t.model_dump(by_alias=True, exclude_none=True) for t in pool.tolerations]
        if tolerations and not policy.tolerations and tolerations != (admin.get("tolerations") or []):
            for j, toleration in enumerate(pool.tolerations):
                if toleration.key not in policy.toleration_keys:
                    problems.append((f"spec.nodePools.{name}.tolerations[{j}]",
                                     f"recipes may not tolerate {toleration.key or 'every taint'!r}; allowed keys: "
                                     f"{_listing(policy.toleration_keys)} (Helm values policy.tolerations, "
                                     "policy.tolerationKeys), or use a node pool from the operator's defaults"))
        if pool.affinity and not policy.affinity and pool.affinity != admin.get("affinity"):
            problems.append((f"spec.nodePools.{name}.affinity", "recipes may not set affinity (Helm value "
                             "policy.affinity); use a node pool from the operator's defaults"))
    return problems


def _check_placement_policy(policy: Policy, spec: RecipeSpec) -> list[tuple[str, str]]:
    """Kueue queues, priority classes and grace periods the recipe names (its defaults and per stage)."""
    problems: list[tuple[str, str]] = []
    owners: list[tuple[str, Any]] = [("spec", spec), *((f"spec.stages[{i}]", s) for i, s in enumerate(spec.stages))]
    for base, owner in owners:
        checks = [("queueName", owner.queue_name, policy.queue_names, "policy.queueNames"),
                  ("priorityClassName", owner.priority_class_name, policy.priority_classes, "policy.priorityClasses"),
                  ("workloadPriorityClass", owner.workload_priority_class, policy.workload_priority_classes,
                   "policy.workloadPriorityClasses")]
        for field, value, allowed, key in checks:
            if value is None or value in allowed or (field == "queueName" and not allowed):
                continue
            problems.append((f"{base}.{field}", f"{value!r} is not allowed; allowed: {_listing(allowed)} "
                                                f"(Helm value {key})"))
    limit = policy.max_grace_seconds
    for i, stage in enumerate(spec.stages):
        grace = stage.termination_grace_period_seconds
        if limit is not None and grace is not None and grace > limit:
            problems.append((f"spec.stages[{i}].terminationGracePeriodSeconds",
                             f"{grace} s is more than the {limit} s allowed (Helm value "
                             "policy.maxTerminationGracePeriodSeconds): a terminating pod holds its GPUs"))
    return problems
