"""Bounds on a document before its schema is looked at (pure; never raises but `RecipeInvalid`).

`load_document` bounds YAML in size, nesting and alias expansion before a value is built and refuses
duplicate keys; `check_values` bounds any JSON document (the operator gets specs from kopf, not
YAML). Separate from `validate` because these hold for any document, whatever its schema.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import yaml

from .field_errors import FieldError, RecipeInvalid, shown

# Bounds: on the document (the API server stores at most ~1.5 MB per object) and on every value.
MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_DEPTH = 32
MAX_NODES = 100_000
MAX_STRING = 256 * 1024
INT64 = 2**63 - 1
MAX_NUMBER = 1e15  # no float of a recipe is anywhere near; keeps every sum and product finite


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
                    errors.append(FieldError(f"{where}[{shown(key, 40)}]", "keys must be strings"))
                    continue
                if len(key) > 253:
                    errors.append(FieldError(where, f"key {shown(key, 40)} is longer than 253 characters"))
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

