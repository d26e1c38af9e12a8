"""Stage references: which fields point where, and the execution order they imply (pure)."""

from __future__ import annotations

import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pydantic import BaseModel

from fathom_jobs import specs

from .api.recipe import BASE, RecipeSpec


@dataclass(frozen=True)
class Reference:
    path: tuple[str | int, ...]  # from the stage mapping, aliases and list indices: ("models", 0, "model")
    target: str  # a stage name, `base`, or a URI
    kinds: tuple[str, ...]  # artifact kinds the field accepts

    @property
    def is_uri(self) -> bool:
        return "://" in self.target

    def dotted(self) -> str:
        return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in self.path)


def _ref_marker(metadata: Sequence[object]) -> specs.Ref | None:
    return next((m for m in metadata if isinstance(m, specs.Ref)), None)


def _list_item_marker(annotation: object) -> specs.Ref | None:
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is typing.Annotated:
            marker = _ref_marker(typing.get_args(arg)[1:])
            if marker:
                return marker
    return None


def references(obj: BaseModel, prefix: tuple[str | int, ...] = ()) -> Iterator[Reference]:
    """Every reference inside a stage (or nested spec), found through the `Ref` markers."""
    dynamic: dict[str, tuple[str, ...]] = getattr(obj, "dynamic_references", dict)()
    for name, field in type(obj).model_fields.items():
        value = getattr(obj, name)
        key = field.alias or name
        marker = _ref_marker(field.metadata)
        if marker is None and key in dynamic:
            marker = specs.Ref(dynamic[key])
        if marker and isinstance(value, str):
            yield Reference((*prefix, key), value, marker.kinds)
        elif isinstance(value, BaseModel):
            yield from references(value, (*prefix, key))
        elif isinstance(value, list):
            item_marker = _list_item_marker(field.annotation)
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from references(item, (*prefix, key, i))
                elif item_marker and isinstance(item, str):
                    yield Reference((*prefix, key, i), item, item_marker.kinds)


def dependencies(spec: RecipeSpec) -> dict[str, list[str]]:
    """Stage name -> the stages it reads from (known names only, in field order, no repeats)."""
    names = {s.name for s in spec.stages}
    deps: dict[str, list[str]] = {}
    for stage in spec.stages:
        found = [r.target for r in references(stage) if r.target in names and r.target != BASE]
        deps[stage.name] = list(dict.fromkeys(found))
    return deps


def find_cycle(deps: dict[str, list[str]]) -> list[str] | None:
    """A cycle as [a, b, ..., a], or None. Iterative: a 10,000-stage chain needs no deep stack."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in deps:
        if root in state:
            continue
        path: list[str] = [root]
        cursors: list[int] = [0]
        state[root] = 1
        while path:
            node, i = path[-1], cursors[-1]
            nexts = deps.get(node, [])
            if i >= len(nexts):
                state[node] = 2
                path.pop()
                cursors.pop()
                continue
            cursors[-1] = i + 1
            nxt = nexts[i]
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                cursors.append(0)
    return None


def levels(deps: dict[str, list[str]]) -> list[list[str]]:
    """Stages grouped by depth: level 0 reads no stage, level n reads only from levels < n.

    Within a level stages keep the recipe's order. Assumes no cycle (validated before); iterative.
    """
    known = {node: list(dict.fromkeys(d for d in reads if d in deps)) for node, reads in deps.items()}
    readers: dict[str, list[str]] = {node: [] for node in deps}
    for node, reads in known.items():
        for d in reads:
            readers[d].append(node)
    remaining = {node: len(reads) for node, reads in known.items()}
    ready = [node for node in deps if not remaining[node]]
    depth: dict[str, int] = {}
    while ready:  # Kahn's algorithm: a node's depth is known once every input's is
        node = ready.pop()
        depth[node] = 1 + max((depth[d] for d in known[node]), default=-1)
        for reader in readers[node]:
            remaining[reader] -= 1
            if not remaining[reader]:
                ready.append(reader)
    if len(depth) < len(deps):
        raise ValueError("levels() needs an acyclic graph")
    grouped: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for node in deps:
        grouped[depth[node]].append(node)
    return grouped


def downstream(deps: dict[str, list[str]], changed: set[str]) -> set[str]:
    """The changed stages and every stage that reads from them, transitively."""
    readers: dict[str, list[str]] = {}
    for node, reads in deps.items():
        for d in reads:
            readers.setdefault(d, []).append(node)
    result = set(changed)
    todo = list(changed)
    while todo:
        for reader in readers.get(todo.pop(), []):
            if reader not in result:
                result.add(reader)
                todo.append(reader)
    return result
