"""What lands in a Kubernetes object or a URL, checked in the API server's formats and bounds (pure).

DNS names, label values, qualified names, images, quantities, the GPU extended resource, s3://
buckets and http(s) endpoints; credentials in any URI are refused. Separate from `spec_checks`
because these are Kubernetes' (and URLs') rules, not Fathom's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from fathom_jobs import registry

from .api.recipe import RecipeSpec
from .field_errors import FieldError, shown

# Kubernetes name formats, always used with fullmatch (`re.match(...$)` accepts a trailing newline).
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
NAME_PART = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_IMAGE_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE = re.compile(
    r"(?:(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9a-fA-F:]+\])"
    r"(?::[0-9]{1,5})?/)?" + _IMAGE_PART + r"(?:/" + _IMAGE_PART + r")*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?")
QUANTITY = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<suffix>m|[EPTGMK]i?|[eE][0-9]{1,2})?")
BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,254}")
REGION = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,62}")
USERINFO = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,31}://(?P<info>[^@\s]*)@")
# Bounds on a stage's resource quantities.
MAX_CPU_CORES = 100_000
MAX_MEMORY_BYTES = 2.0**60  # 1 EiB


def is_dns_label(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= 63 and DNS_LABEL.fullmatch(value) is not None


def is_dns_subdomain(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= 253 and DNS_SUBDOMAIN.fullmatch(value) is not None


def is_label_value(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= 63 and LABEL_VALUE.fullmatch(value) is not None


def is_qualified_name(value: Any) -> bool:
    """A label key (or resource name): `[prefix/]name`, prefix a DNS subdomain, name at most 63."""
    if not isinstance(value, str):
        return False
    prefix, _, name = value.rpartition("/")
    if "/" in value and not is_dns_subdomain(prefix):
        return False
    return len(name) <= 63 and NAME_PART.fullmatch(name) is not None


def is_extended_resource(value: Any) -> bool:
    """`vendor.example/name` outside kubernetes.io (so never cpu, memory or another native resource)."""
    if not is_qualified_name(value) or "/" not in value:
        return False
    prefix = value.split("/", 1)[0]
    return not (prefix == "kubernetes.io" or prefix.endswith(".kubernetes.io") or value.startswith("requests."))


def quantity_value(text: str) -> float | None:
    """A Kubernetes quantity ('500m', '16', '128Gi', '64e9') as a number; None when malformed."""
    match = QUANTITY.fullmatch(text)
    if not match:
        return None
    suffix = match.group("suffix") or ""
    units = {"": 1.0, "m": 1e-3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
             **{f"{u}i": 1024.0 ** (i + 1) for i, u in enumerate("KMGTPE")}}
    scale = 10.0 ** int(suffix[1:]) if suffix[:1] in ("e", "E") and suffix not in units else units[suffix]
    return float(match.group("number")) * scale


def _url_error(value: str, what: str) -> str | None:
    """An http(s) base URL without credentials, query or fragment, or why not."""
    if "@" in value:
        return "credentials do not belong in a URL; put them in a Secret"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return f"{shown(value)} is not a valid {what} URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"expected http(s)://host[:port][/path], got {shown(value)}"
    if "@" in parts.netloc:
        return "credentials do not belong in a URL; put them in a Secret"
    if parts.query or parts.fragment or any(c.isspace() for c in value):
        return f"expected http(s)://host[:port][/path] without query, fragment or spaces, got {shown(value)}"
    return None


def uri_credentials(raw: Any, root: str) -> list[FieldError]:
    """Every string that is a URI with userinfo (`s3://KEY:SECRET@bucket`, `https://user:key@host`)."""
    errors = []
    stack: list[tuple[Any, str]] = [(raw, root)]
    while stack:
        value, path = stack.pop()
        if isinstance(value, Mapping):
            stack.extend((v, f"{path}.{k}") for k, v in value.items() if isinstance(k, str))
        elif isinstance(value, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(value))
        elif isinstance(value, str) and (match := USERINFO.match(value)):
            scheme = value.split("://", 1)[0].lower()
            info = match.group("info")
            authority = info.split("/", 1)[0]
            # user:password@ (a password may hold '/'), or token@host; hf://org/name@revision is a revision.
            if ":" in authority or ("/" not in info and scheme != "hf"):
                errors.append(FieldError(path, "credentials do not belong in a URI (they would be copied into "
                                               "Jobs, status and events); put them in a Secret"))
    return sorted(errors, key=lambda e: e.path)


def check_formats(spec: RecipeSpec) -> list[FieldError]:
    """Everything that lands in a Kubernetes object or a URL, in the API server's formats and bounds."""
    errors: list[FieldError] = []
    storage = spec.storage
    if storage is not None:
        if storage.uri.startswith("s3://"):
            bucket, _, prefix = storage.uri[len("s3://"):].partition("/")
            if not BUCKET.fullmatch(bucket):
                errors.append(FieldError("spec.storage.uri", f"{shown(bucket)} is not a bucket name"))
            elif any(part in (".", "..") for part in prefix.split("/")) or any(c.isspace() or c in "\\?#" for c in prefix):
                errors.append(FieldError("spec.storage.uri", "the prefix may not hold '.', '..', spaces, '\\', '?' or '#'"))
        if storage.endpoint is not None and (msg := _url_error(storage.endpoint, "S3 endpoint")):
            errors.append(FieldError("spec.storage.endpoint", msg))
        if storage.region is not None and not REGION.fullmatch(storage.region):
            errors.append(FieldError("spec.storage.region", f"{shown(storage.region)} is not a region name"))
    if spec.service_account_name is not None and not is_dns_subdomain(spec.service_account_name):
        errors.append(FieldError("spec.serviceAccountName",
                                 f"{shown(spec.service_account_name)} is not a valid ServiceAccount name (DNS-1123 subdomain)"))
    errors += _check_placement_names(spec)
    images = [(f"spec.images.{family}", getattr(spec.images, family, None)) for family in registry.FAMILIES]
    images += [(f"spec.stages[{i}].image", stage.image) for i, stage in enumerate(spec.stages)]
    for path, image in images:
        if image is not None and (len(image) > 512 or not IMAGE.fullmatch(image)):
            errors.append(FieldError(path, f"{shown(image)} is not an image reference (registry/name[:tag][@digest])"))
    for name, pool in spec.node_pools.items():
        base = f"spec.nodePools.{name}"
        for key, value in pool.node_selector.items():
            if not is_qualified_name(key):
                errors.append(FieldError(f"{base}.nodeSelector", f"{shown(key)} is not a label key"))
            elif not is_label_value(value):
                errors.append(FieldError(f"{base}.nodeSelector.{key}", f"{shown(value)} is not a label value"))
        for j, toleration in enumerate(pool.tolerations):
            where = f"{base}.tolerations[{j}]"
            if toleration.key is not None and toleration.key != "" and not is_qualified_name(toleration.key):
                errors.append(FieldError(f"{where}.key", f"{shown(toleration.key)} is not a taint key"))
            if not toleration.key and toleration.operator != "Exists":
                errors.append(FieldError(f"{where}.operator", "must be Exists when key is empty"))
            if toleration.value and toleration.operator == "Exists":
                errors.append(FieldError(f"{where}.value", "must be empty when operator is Exists"))
            elif toleration.value is not None and not is_label_value(toleration.value):
                errors.append(FieldError(f"{where}.value", f"{shown(toleration.value)} is not a label value"))
            if toleration.toleration_seconds is not None and toleration.effect != "NoExecute":
                errors.append(FieldError(f"{where}.tolerationSeconds", "only with effect NoExecute"))
        if pool.affinity is not None:
            unknown = sorted(set(pool.affinity) - {"nodeAffinity", "podAffinity", "podAntiAffinity"})
            if unknown:
                errors.append(FieldError(f"{base}.affinity", f"unknown field {shown(unknown[0])}; expected "
                                                             "nodeAffinity, podAffinity or podAntiAffinity"))
        if not is_extended_resource(pool.gpu_resource):
            errors.append(FieldError(f"{base}.gpuResource", f"{shown(pool.gpu_resource)} is not an extended resource "
                                                            "name (vendor.example/name, e.g. nvidia.com/gpu; never "
                                                            "cpu, memory or another kubernetes.io resource)"))
    for i, stage in enumerate(spec.stages):
        for field, bound, unit in (("cpu", MAX_CPU_CORES, "cores"), ("memory", MAX_MEMORY_BYTES, "bytes")):
            text = getattr(stage.resources, field, None) if stage.resources else None
            number = quantity_value(text) if text is not None else None
            if text is not None and (number is None or not 0 < number <= bound):
                errors.append(FieldError(f"spec.stages[{i}].resources.{field}",
                                         f"{shown(text)} is not a {field} quantity above 0 and at most {bound:g} {unit}"))
        judge = getattr(stage, "judge", None)
        if judge is not None and judge.endpoint is not None and (msg := _url_error(judge.endpoint, "judge endpoint")):
            errors.append(FieldError(f"spec.stages[{i}].judge.endpoint", msg))
    return errors


def _check_placement_names(spec: RecipeSpec) -> list[FieldError]:
    """Kueue queue and priority names (recipe defaults and per stage) and pool topology levels."""
    errors: list[FieldError] = []
    owners: list[tuple[str, Any]] = [("spec", spec), *((f"spec.stages[{i}]", s) for i, s in enumerate(spec.stages))]
    for base, owner in owners:
        queue, priority, workload = owner.queue_name, owner.priority_class_name, owner.workload_priority_class
        # Both Kueue names are label values on the Job (at most 63) and names of Kueue objects.
        if queue is not None and not (is_dns_subdomain(queue) and is_label_value(queue)):
            errors.append(FieldError(f"{base}.queueName", f"{shown(queue)} is not a LocalQueue name "
                                                          "(DNS-1123 subdomain of at most 63 characters: it is a label value)"))
        if workload is not None and not (is_dns_subdomain(workload) and is_label_value(workload)):
            errors.append(FieldError(f"{base}.workloadPriorityClass",
                                     f"{shown(workload)} is not a WorkloadPriorityClass name (DNS-1123 subdomain of "
                                     "at most 63 characters: it is a label value)"))
        if priority is not None and not is_dns_subdomain(priority):
            errors.append(FieldError(f"{base}.priorityClassName",
                                     f"{shown(priority)} is not a PriorityClass name (DNS-1123 subdomain)"))
    for name, pool in spec.node_pools.items():
        if pool.topology is not None and not is_qualified_name(pool.topology.level):
            errors.append(FieldError(f"spec.nodePools.{name}.topology.level",
                                     f"{shown(pool.topology.level)} is not a node label key (a level of the Kueue "
                                     "Topology, e.g. cloud.provider.com/topology-rack)"))
    return errors

