"""Turning a user's document into a FathomRecipe, or into field-path errors (pure).

Every error names the field as a user would point at it (`spec.stages[3].data`) and what was
expected. `load_recipe` and `validate_document` never raise anything but `RecipeInvalid`, whatever
the input: YAML is bounded in size, nesting and alias expansion before it is built, duplicate keys
are errors, and every value that lands in a Kubernetes object is checked the way the API server
checks it (names fullmatched, label values, quantities, int32/int64 bounds, finite numbers, an
extended resource for GPUs). Credentials in URIs are refused, prices and budgets are bounded so
the cost arithmetic cannot overflow, and with an operator defaults file the admin's policy
(`policy.py`) decides what a recipe may choose. Messages are redacted (`fathom_jobs.redact`).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import ValidationError

from fathom_jobs import registry, specs
from fathom_jobs.redact import redact

from . import dag
from .api.recipe import API_VERSION, BASE, KIND, STAGE_MODELS, FathomRecipe, RecipeSpec, StageCommon

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
URI_START = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,31}://")
USERINFO = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,31}://(?P<info>[^@\s]*)@")
# Bounds: on the document (the API server stores at most ~1.5 MB per object) and on every value.
MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_DEPTH = 32
MAX_NODES = 100_000
MAX_STRING = 256 * 1024
INT64 = 2**63 - 1
MAX_NUMBER = 1e15  # no float of a recipe is anywhere near; keeps every sum and product finite
MAX_CPU_CORES = 100_000
COUNT_BOUNDS = {"samples": 4096, "num_generations": 4096}  # per-problem sample counts
MAX_MEMORY_BYTES = 2.0**60  # 1 EiB
# `<recipe>-<stage>-<attempt>` must fit in 63; the recipe part is hash-shortened, the stage is not.
MAX_STAGE_NAME = 40
BENCHMARKS = specs.SHIPPED_DATASETS
SAMPLING_TYPES = sorted(name for name, row in registry.STAGE_TYPES.items() if row.samples)
TRAINING_TYPES = sorted(name for name, row in registry.STAGE_TYPES.items() if row.trains)


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __post_init__(self) -> None:  # user input is quoted in messages: never a credential
        object.__setattr__(self, "path", redact(self.path)[:500])
        object.__setattr__(self, "message", redact(self.message)[:2000])

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class RecipeInvalid(Exception):
    def __init__(self, errors: list[FieldError]):
        self.errors = errors
        super().__init__("\n".join(map(str, errors)))


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _shown(value: Any, limit: int = 120) -> str:
    """A user's value quoted in a message: repr, cut short (a 1 MB prompt is not echoed back)."""
    text = repr(value) if not isinstance(value, str) or len(value) <= limit else repr(value[:limit]) + "..."
    return text if len(text) <= limit + 10 else text[:limit] + "..."


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
            message = f"expected {err['ctx']['expected']}, got {_shown(err['input'])}"
        else:
            message = err["msg"]
            if "input" in err and not isinstance(err["input"], (dict, list)):
                message += f", got {_shown(err['input'])}"
        path = _loc_to_path(loc)
        errors.append(FieldError(f"{prefix}{path}" if prefix else path, message))
    return errors


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader; `load_document` checks the node tree before anything is built.
    Timestamps stay strings, as kubectl sends them to the API server."""


# libyaml's parser when PyYAML has it (10-20x faster; errors are still worded by the Python one).
_FastLoader: Any = type("_FastLoader", (yaml.CSafeLoader,), {}) if getattr(yaml, "__with_libyaml__", False) else _Loader
for _loader in {_Loader, _FastLoader}:
    _loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def load_document(text: str, source: str = "recipe") -> dict[str, Any]:
    """One YAML document holding a mapping, or RecipeInvalid (never another exception).

    Before a value is built: at most MAX_DOCUMENT_BYTES, nesting at most MAX_DEPTH (checked on the
    parser's event stream, which is not recursive), at most MAX_NODES nodes with aliases expanded
    (no "billion laughs"), no recursive aliases, no duplicate keys, no integer of absurd length.
    """
    if not isinstance(text, str):
        raise RecipeInvalid([FieldError(source, f"expected YAML text, got {type(text).__name__}")])
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_DOCUMENT_BYTES:
        raise RecipeInvalid([FieldError(source, f"{size:,} bytes; a recipe is at most {MAX_DOCUMENT_BYTES:,} bytes")])
    try:
        try:
            docs = _load_all(text, source, _FastLoader)
        except yaml.YAMLError:
            if _FastLoader is _Loader or size > 16 * 1024:
                raise
            docs = _load_all(text, source, _Loader)  # the same error in PyYAML's words (small files: fast)
    except RecipeInvalid:
        raise
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "document"
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeInvalid([FieldError(f"{source}: {where}", f"malformed YAML: {problem}")]) from None
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as exc:
        raise RecipeInvalid([FieldError(f"{source}: document", f"malformed YAML: {str(exc)[:200]}")]) from None
    if not docs:
        raise RecipeInvalid([FieldError(source, "empty document; expected one FathomRecipe")])
    if len(docs) > 1:
        raise RecipeInvalid([FieldError(source, f"{len(docs)} documents; expected exactly one FathomRecipe per file")])
    if not isinstance(docs[0], dict):
        raise RecipeInvalid([FieldError(source, f"expected a mapping (a FathomRecipe), got {type(docs[0]).__name__}")])
    return docs[0]


def _load_all(text: str, source: str, loader_class: Any) -> list[Any]:
    _check_events(text, source, loader_class)
    loader = loader_class(text)
    try:
        docs = []
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            if errors := _check_nodes(node, source):
                raise RecipeInvalid(errors)
            docs.append(loader.construct_document(node))
    finally:
        loader.dispose()
    return [d for d in docs if d is not None]


def _at(source: str, mark: Any) -> str:
    return f"{source}: line {mark.line + 1}, column {mark.column + 1}" if mark is not None else source


def _check_events(text: str, source: str, loader_class: Any = _Loader) -> None:
    """Nesting depth and node count from the parser's events (iterative, so any depth is safe)."""
    depth = events = 0
    for event in yaml.parse(text, Loader=loader_class):
        events += 1
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise RecipeInvalid([FieldError(_at(source, event.start_mark),
                                                f"nested deeper than {MAX_DEPTH} levels")])
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
        if events > 2 * MAX_NODES:
            raise RecipeInvalid([FieldError(source, f"more than {MAX_NODES:,} values")])


def _node_children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [child for pair in node.value for child in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_nodes(root: yaml.Node, source: str) -> list[FieldError]:
    """Duplicate keys (with their field path), absurd integers, recursive aliases, and the size of
    the document once aliases are expanded. Each node object is visited once: aliases share nodes."""
    errors: list[FieldError] = []
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            if node.tag == "tag:yaml.org,2002:int" and len(node.value) > 40:
                errors.append(FieldError(path or _at(source, node.start_mark), f"integer of {len(node.value)} digits; "
                                         "numbers in a recipe fit in 64 bits"))
            continue
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(node.value))
            continue
        keys: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            child = f"{path}.{name}" if path and name is not None else (name if name is not None else f"{path}[?]")
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                ident = (key.tag, key.value)
                if ident in keys:
                    errors.append(FieldError(child or _at(source, key.start_mark),
                                             f'duplicate key "{key.value[:60]}" ({_at(source, key.start_mark)})'))
                keys[ident] = 1
            stack.append((key, child))
            stack.append((value, child))
    if errors:
        return errors
    # Expanded size: nodes counted once per place they appear (post-order over the shared graph).
    sizes: dict[int, int] = {}
    active: set[int] = set()
    work: list[tuple[yaml.Node, bool]] = [(root, False)]
    while work:
        node, children_done = work.pop()
        if id(node) in sizes:
            continue
        children = _node_children(node)
        if not children_done:
            if id(node) in active:
                return [FieldError(_at(source, node.start_mark), "a recursive alias (an anchor used inside itself)")]
            active.add(id(node))
            work.append((node, True))
            for child in children:
                if id(child) in active and id(child) not in sizes:
                    return [FieldError(_at(source, child.start_mark), "a recursive alias (an anchor used inside itself)")]
                if id(child) not in sizes:
                    work.append((child, False))
            continue
        active.discard(id(node))
        sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
        if sizes[id(node)] > MAX_NODES:
            return [FieldError(source, f"more than {MAX_NODES:,} values once its aliases are expanded")]
    return []


def check_values(doc: Any, root: str = "") -> list[FieldError]:
    """What any JSON document must satisfy before its schema is looked at: nesting, size, JSON types
    only, string keys, finite numbers within 64 bits, strings of bounded length. Iterative."""
    errors: list[FieldError] = []
    stack: list[tuple[Any, str, int]] = [(doc, root, 0)]
    count = 0
    while stack and len(errors) < 50:
        value, path, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            return [FieldError(root or "(document)", f"more than {MAX_NODES:,} values")]
        where = path or "(document)"
        if isinstance(value, Mapping):
            if depth >= MAX_DEPTH:
                errors.append(FieldError(where, f"nested deeper than {MAX_DEPTH} levels"))
                continue
            for key, item in value.items():
                if not isinstance(key, str):
                    errors.append(FieldError(f"{where}[{_shown(key, 40)}]", "keys must be strings"))
                    continue
                if len(key) > 253:
                    errors.append(FieldError(where, f"key {_shown(key, 40)} is longer than 253 characters"))
                    continue
                stack.append((item, f"{path}.{key}" if path else key, depth + 1))
        elif isinstance(value, list):
            if depth >= MAX_DEPTH:
                errors.append(FieldError(where, f"nested deeper than {MAX_DEPTH} levels"))
                continue
            stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value))
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int):
            if not -INT64 - 1 <= value <= INT64:
                errors.append(FieldError(where, "integer out of range: numbers in a recipe fit in 64 bits"))
        elif isinstance(value, float):
            if not math.isfinite(value):
                errors.append(FieldError(where, f"{value} is not a finite number"))
            elif abs(value) > MAX_NUMBER:
                errors.append(FieldError(where, f"{value:g} is out of range (at most {MAX_NUMBER:g} in magnitude)"))
        elif isinstance(value, str):
            if len(value) > MAX_STRING:
                errors.append(FieldError(where, f"{len(value):,} characters; at most {MAX_STRING:,}"))
            elif "\x00" in value:
                errors.append(FieldError(where, "contains a NUL character"))
        else:
            errors.append(FieldError(where, f"expected a JSON value (string, number, boolean, list, mapping), "
                                            f"got {type(value).__name__}"))
    return sorted(errors, key=lambda e: e.path)


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
        return f"{_shown(value)} is not a valid {what} URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"expected http(s)://host[:port][/path], got {_shown(value)}"
    if "@" in parts.netloc:
        return "credentials do not belong in a URL; put them in a Secret"
    if parts.query or parts.fragment or any(c.isspace() for c in value):
        return f"expected http(s)://host[:port][/path] without query, fragment or spaces, got {_shown(value)}"
    return None


def _uri_credentials(raw: Any, root: str) -> list[FieldError]:
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


def _check_formats(spec: RecipeSpec) -> list[FieldError]:
    """Everything that lands in a Kubernetes object or a URL, in the API server's formats and bounds."""
    errors: list[FieldError] = []
    storage = spec.storage
    if storage is not None:
        if storage.uri.startswith("s3://"):
            bucket, _, prefix = storage.uri[len("s3://"):].partition("/")
            if not BUCKET.fullmatch(bucket):
                errors.append(FieldError("spec.storage.uri", f"{_shown(bucket)} is not a bucket name"))
            elif any(part in (".", "..") for part in prefix.split("/")) or any(c.isspace() or c in "\\?#" for c in prefix):
                errors.append(FieldError("spec.storage.uri", "the prefix may not hold '.', '..', spaces, '\\', '?' or '#'"))
        if storage.endpoint is not None and (msg := _url_error(storage.endpoint, "S3 endpoint")):
            errors.append(FieldError("spec.storage.endpoint", msg))
        if storage.region is not None and not REGION.fullmatch(storage.region):
            errors.append(FieldError("spec.storage.region", f"{_shown(storage.region)} is not a region name"))
    if spec.service_account_name is not None and not is_dns_subdomain(spec.service_account_name):
        errors.append(FieldError("spec.serviceAccountName",
                                 f"{_shown(spec.service_account_name)} is not a valid ServiceAccount name (DNS-1123 subdomain)"))
    if spec.queue_name is not None and not (is_dns_subdomain(spec.queue_name) and is_label_value(spec.queue_name)):
        errors.append(FieldError("spec.queueName", f"{_shown(spec.queue_name)} is not a LocalQueue name "
                                                   "(DNS-1123 subdomain of at most 63 characters: it is a label value)"))
    images = [(f"spec.images.{family}", getattr(spec.images, family, None)) for family in registry.FAMILIES]
    images += [(f"spec.stages[{i}].image", stage.image) for i, stage in enumerate(spec.stages)]
    for path, image in images:
        if image is not None and (len(image) > 512 or not IMAGE.fullmatch(image)):
            errors.append(FieldError(path, f"{_shown(image)} is not an image reference (registry/name[:tag][@digest])"))
    for name, pool in spec.node_pools.items():
        base = f"spec.nodePools.{name}"
        for key, value in pool.node_selector.items():
            if not is_qualified_name(key):
                errors.append(FieldError(f"{base}.nodeSelector", f"{_shown(key)} is not a label key"))
            elif not is_label_value(value):
                errors.append(FieldError(f"{base}.nodeSelector.{key}", f"{_shown(value)} is not a label value"))
        for j, toleration in enumerate(pool.tolerations):
            where = f"{base}.tolerations[{j}]"
            if toleration.key is not None and toleration.key != "" and not is_qualified_name(toleration.key):
                errors.append(FieldError(f"{where}.key", f"{_shown(toleration.key)} is not a taint key"))
            if not toleration.key and toleration.operator != "Exists":
                errors.append(FieldError(f"{where}.operator", "must be Exists when key is empty"))
            if toleration.value and toleration.operator == "Exists":
                errors.append(FieldError(f"{where}.value", "must be empty when operator is Exists"))
            elif toleration.value is not None and not is_label_value(toleration.value):
                errors.append(FieldError(f"{where}.value", f"{_shown(toleration.value)} is not a label value"))
            if toleration.toleration_seconds is not None and toleration.effect != "NoExecute":
                errors.append(FieldError(f"{where}.tolerationSeconds", "only with effect NoExecute"))
        if pool.affinity is not None:
            unknown = sorted(set(pool.affinity) - {"nodeAffinity", "podAffinity", "podAntiAffinity"})
            if unknown:
                errors.append(FieldError(f"{base}.affinity", f"unknown field {_shown(unknown[0])}; expected "
                                                             "nodeAffinity, podAffinity or podAntiAffinity"))
        if not is_extended_resource(pool.gpu_resource):
            errors.append(FieldError(f"{base}.gpuResource", f"{_shown(pool.gpu_resource)} is not an extended resource "
                                                            "name (vendor.example/name, e.g. nvidia.com/gpu; never "
                                                            "cpu, memory or another kubernetes.io resource)"))
    for i, stage in enumerate(spec.stages):
        for field, bound, unit in (("cpu", MAX_CPU_CORES, "cores"), ("memory", MAX_MEMORY_BYTES, "bytes")):
            text = getattr(stage.resources, field, None) if stage.resources else None
            number = quantity_value(text) if text is not None else None
            if text is not None and (number is None or not 0 < number <= bound):
                errors.append(FieldError(f"spec.stages[{i}].resources.{field}",
                                         f"{_shown(text)} is not a {field} quantity above 0 and at most {bound:g} {unit}"))
        judge = getattr(stage, "judge", None)
        if judge is not None and judge.endpoint is not None and (msg := _url_error(judge.endpoint, "judge endpoint")):
            errors.append(FieldError(f"spec.stages[{i}].judge.endpoint", msg))
    return errors


def _uri_error(value: str, allowed: tuple[str, ...]) -> str | None:
    if not value.startswith(allowed):
        return f"expected a URI starting with {' or '.join(allowed)}, got {value!r}"
    return None


def _check_band(band: specs.SolveRateBand, path: str) -> list[FieldError]:
    errors = []
    for field in ("above", "at_least", "below", "at_most"):
        value = getattr(band, field)
        if value is not None and not 0.0 <= value <= 1.0:
            alias = specs.SolveRateBand.model_fields[field].alias
            errors.append(FieldError(f"{path}.{alias}", f"solve rates lie in [0, 1], got {value}"))
    if band.above is not None and band.at_least is not None:
        errors.append(FieldError(path, "give one lower bound: above (exclusive) or atLeast (inclusive), not both"))
    if band.below is not None and band.at_most is not None:
        errors.append(FieldError(path, "give one upper bound: below (exclusive) or atMost (inclusive), not both"))
    low = band.above if band.above is not None else band.at_least
    high = band.below if band.below is not None else band.at_most
    if errors or low is None or high is None:
        return errors
    empty = low > high or (low == high and (band.above is not None or band.below is not None))
    if empty:
        errors.append(FieldError(path, f"empty band: lower bound {low} is not below upper bound {high}"))
    return errors


def _check_stage_params(stage: StageCommon, path: str, spec: RecipeSpec) -> list[FieldError]:
    errors: list[FieldError] = []
    for field, bound in COUNT_BOUNDS.items():  # counts the operator itself loops over (rate grids, forecasts)
        value = getattr(stage, field, None)
        alias = type(stage).model_fields[field].alias if field in type(stage).model_fields else field
        if isinstance(value, int) and not isinstance(value, bool) and value > bound:
            errors.append(FieldError(f"{path}.{alias}", f"{value} is more than {bound:,}"))
    if isinstance(stage, specs.CurateParams):
        select = stage.effective().select
        if select and select.solve_rate:
            errors += _check_band(select.solve_rate, f"{path}.select.solveRate")
        if select and select.difficulty:
            d = select.difficulty
            for key in ("min", "max"):
                value = getattr(d, key)
                if value is not None and not 1 <= value <= 10:
                    errors.append(FieldError(f"{path}.select.difficulty.{key}", f"difficulty is rated 1-10, got {value}"))
            if d.min is not None and d.max is not None and d.min > d.max:
                errors.append(FieldError(f"{path}.select.difficulty", f"min {d.min} is above max {d.max}"))
    elif isinstance(stage, specs.MergeParams):
        weights = [m.weight for m in stage.models]
        for i, w in enumerate(weights):
            if w < 0:
                errors.append(FieldError(f"{path}.models[{i}].weight", f"linear merge weights must be >= 0, got {w}"))
        if all(w == 0 for w in weights):
            errors.append(FieldError(f"{path}.models", "at least one weight must be above 0"))
        seen = [m.model for m in stage.models]
        for i, name in enumerate(seen):
            if name in seen[:i]:
                errors.append(FieldError(f"{path}.models[{i}].model", f'"{name}" is listed twice'))
    elif isinstance(stage, (specs.EvalParams, specs.PrepareParams)):
        field = "benchmarks" if isinstance(stage, specs.EvalParams) else "decontaminate"
        for i, bench in enumerate(getattr(stage, field)):
            if "://" not in bench and bench not in BENCHMARKS:
                errors.append(FieldError(
                    f"{path}.{field}[{i}]",
                    f'unknown benchmark "{bench}"{_suggest(bench, list(BENCHMARKS))}; expected one of '
                    f"{', '.join(BENCHMARKS)} or a store URI",
                ))
    if isinstance(stage, specs.PrepareParams):
        for i, source in enumerate(stage.sources):
            if source.uri not in BENCHMARKS and (msg := _uri_error(source.uri, specs.STORE_SCHEMES)):
                errors.append(FieldError(f"{path}.sources[{i}].uri", msg))
    if isinstance(stage, specs.GrpoParams):
        pool = spec.node_pools.get(stage.pool)
        gpus = stage.gpus_per_node if stage.gpus_per_node is not None else (pool.gpus_per_node if pool else 0)
        world = max(1, gpus) * stage.nodes
        batch = stage.per_device_batch_size * world * stage.gradient_accumulation_steps
        if stage.use_vllm and max(1, gpus) % stage.vllm_tensor_parallel_size:
            errors.append(FieldError(f"{path}.vllmTensorParallelSize",
                                     f"{stage.vllm_tensor_parallel_size} does not divide the pod's {gpus} GPUs"))
        if batch % stage.num_generations:
            errors.append(FieldError(
                f"{path}.numGenerations",
                f"the generation batch (perDeviceBatchSize {stage.per_device_batch_size} x {world} processes x "
                f"gradientAccumulationSteps {stage.gradient_accumulation_steps} = {batch}) must be divisible by "
                f"numGenerations {stage.num_generations}",
            ))
    return errors


def _vllm_field(stage: StageCommon) -> str | None:
    """The field that asks for vLLM (which needs GPUs), or None."""
    if isinstance(stage, specs.GrpoParams):
        return "useVllm" if stage.use_vllm else None
    if isinstance(stage, specs.AnnotateParams):
        return "judge.backend" if stage.judge.backend == "vllm" else None
    return "engine" if getattr(stage, "engine", None) == "vllm" else None


def _check_placement(stage: StageCommon, path: str, spec: RecipeSpec) -> list[FieldError]:
    pools = sorted(spec.node_pools)
    pool = spec.node_pools.get(stage.pool)
    if pool is None:
        return [FieldError(f"{path}.pool", f'no node pool named "{stage.pool}"{_suggest(stage.pool, pools)}; '
                                          f"expected one of {', '.join(pools)}")]
    errors = []
    gpus = stage.gpus_per_node if stage.gpus_per_node is not None else pool.gpus_per_node
    if gpus > pool.gpus_per_node:
        errors.append(FieldError(f"{path}.gpusPerNode", f'{gpus} GPUs per pod, but pool "{stage.pool}" nodes have {pool.gpus_per_node}'))
    field = _vllm_field(stage)
    if field is not None and gpus == 0:
        errors.append(FieldError(f"{path}.{field}", f'vLLM needs GPUs, but the stage has none (pool "{stage.pool}"); '
                                                    "use the transformers engine or a GPU pool"))
    row = registry.stage_type(stage.type)
    if stage.shards > 1 and not row.samples:
        errors.append(FieldError(f"{path}.shards", f"only sampling stages ({', '.join(SAMPLING_TYPES)}) are sharded"))
    if stage.nodes > 1 and not row.trains:
        errors.append(FieldError(f"{path}.nodes", f"only training stages ({', '.join(TRAINING_TYPES)}) span nodes"))
    if stage.nodes > 1 and gpus == 0:
        errors.append(FieldError(f"{path}.nodes", "multi-node training needs GPUs on each node"))
    return errors


def _check_references(spec: RecipeSpec) -> list[FieldError]:
    by_name = {s.name: (i, s) for i, s in enumerate(spec.stages)}
    errors = []
    for i, stage in enumerate(spec.stages):
        for ref in dag.references(stage):
            path = f"spec.stages[{i}]{ref.dotted()}"
            if ref.is_uri:
                if msg := _uri_error(ref.target, specs.STORE_SCHEMES):
                    errors.append(FieldError(path, msg))
                continue
            if ref.target == BASE:
                produced = specs.MODEL
            elif ref.target in by_name:
                _, target = by_name[ref.target]
                produced = registry.stage_type(target.type).output(target)
            else:
                hint = _suggest(ref.target, [*by_name, BASE])
                errors.append(FieldError(path, f'no stage named "{ref.target}"{hint}'))
                continue
            if produced not in ref.kinds:
                what = f'stage "{ref.target}" ({by_name[ref.target][1].type})' if ref.target in by_name else BASE
                errors.append(FieldError(path, f"{what} produces {produced}; expected {' or '.join(ref.kinds)}"))
    return errors


def check_spec(spec: RecipeSpec) -> list[FieldError]:
    """Semantic checks beyond the schema; every error carries its field path."""
    errors: list[FieldError] = []
    if spec.storage is None:
        errors.append(FieldError("spec.storage", "required: where stage outputs go (no operator default is configured)"))
    elif msg := _uri_error(spec.storage.uri, ("s3://", "file://")):
        errors.append(FieldError("spec.storage.uri", msg))
    if not spec.node_pools:
        return errors + [FieldError("spec.nodePools", "required: at least one node pool (no operator default is configured)")]
    if msg := _uri_error(spec.base_model, specs.STORE_SCHEMES):
        errors.append(FieldError("spec.baseModel", msg))
    from .policy import secret_fields

    for path, name in secret_fields(spec):
        if name is not None and not is_dns_subdomain(name):
            errors.append(FieldError(path, f"{_shown(name)} is not a valid Secret name (DNS-1123 subdomain)"))
    first_index: dict[str, int] = {}
    for i, stage in enumerate(spec.stages):
        path = f"spec.stages[{i}]"
        if not is_dns_label(stage.name):
            shown = f'"{stage.name}"' if len(stage.name) <= 80 and stage.name.isprintable() else _shown(stage.name)
            errors.append(FieldError(f"{path}.name", f"{shown} is not a DNS-1123 label "
                                                     "(lowercase letters, digits and '-', alphanumeric at both ends)"))
        elif len(stage.name) > MAX_STAGE_NAME:
            errors.append(FieldError(f"{path}.name", f'"{stage.name}" is {len(stage.name)} characters; at most '
                                                     f"{MAX_STAGE_NAME} so Job names <recipe>-<stage>-<attempt> fit in 63"))
        if stage.name == BASE:
            errors.append(FieldError(f"{path}.name", f'"{BASE}" is reserved for spec.baseModel'))
        if stage.name in first_index:
            errors.append(FieldError(f"{path}.name", f'duplicate stage name "{stage.name}" (first at spec.stages[{first_index[stage.name]}])'))
        first_index.setdefault(stage.name, i)
        errors += _check_placement(stage, path, spec)
        errors += _check_stage_params(stage, path, spec)
    errors += _check_references(spec)
    errors += _check_formats(spec)
    if not any(e.message.startswith("no stage named") for e in errors):
        deps = dag.dependencies(spec)
        if cycle := dag.find_cycle(deps):
            i = first_index[cycle[0]]
            ref = next(r for r in dag.references(spec.stages[i]) if r.target == cycle[1])
            errors.append(FieldError(f"spec.stages[{i}]{ref.dotted()}", f"cycle: {' -> '.join(cycle)}"))
    return errors


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
        errors.append(FieldError("metadata.name", f"{_shown(meta.name)} is not a DNS-1123 subdomain"))
    elif len(meta.name) > 63:  # it is a label value on every Job and Pod of the recipe
        errors.append(FieldError("metadata.name", f"{len(meta.name)} characters; at most 63 for a recipe "
                                                  "the operator runs (its Jobs carry it in the fathom.dev/recipe label)"))
    if meta.namespace is not None and not is_dns_label(meta.namespace):
        errors.append(FieldError("metadata.namespace", f"{_shown(meta.namespace)} is not a DNS-1123 label"))
    found = doc.get("spec")
    raw_spec: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    errors += _uri_credentials(raw_spec, "spec")
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
