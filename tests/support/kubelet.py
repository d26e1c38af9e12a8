"""The kubelet's expansion of container env values, as Kubernetes implements it (a test oracle).

A line-by-line port of `third_party/forked/golang/expansion/expand.go` (Expand, tryReadVariableName,
MappingFuncFor) and of how the kubelet builds a container's environment
(`kubelet_pods.go: makeEnvironmentVariables`): variables from `envFrom` first, unexpanded; then
each `env` entry in order, its value expanded against everything defined before it; `$$` is an
escaped `$`, `$(VAR)` becomes VAR's value when VAR is defined and stays as written otherwise.
Kept independent of the operator's own `local.expand_env` on purpose.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

OPERATOR = "$"
OPENER = "("
CLOSER = ")"


def syntax_wrap(name: str) -> str:
    return OPERATOR + OPENER + name + CLOSER


def mapping_func_for(*contexts: Mapping[str, str]) -> Callable[[str], str]:
    def mapping(name: str) -> str:
        for context in contexts:
            if name in context:
                return context[name]
        return syntax_wrap(name)

    return mapping


def try_read_variable_name(text: str) -> tuple[str, bool, int]:
    first = text[0]
    if first == OPERATOR:
        return text[0:1], False, 1  # escaped operator
    if first == OPENER:
        for i in range(1, len(text)):
            if text[i] == CLOSER:
                return text[1:i], True, i + 1
        return OPERATOR + OPENER, False, 1  # incomplete reference
    return OPERATOR + first, False, 1  # an operator that does not begin an expression


def expand(text: str, mapping: Callable[[str], str]) -> str:
    # Go indexes bytes; the operator characters are ASCII, so indexing UTF-8 bytes or code points
    # gives the same result.
    buf: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(text):
        if text[cursor] == OPERATOR and cursor + 1 < len(text):
            buf.append(text[checkpoint:cursor])
            read, is_var, advance = try_read_variable_name(text[cursor + 1:])
            buf.append(mapping(read) if is_var else read)
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    return "".join(buf) + text[checkpoint:]


def container_environment(container: Mapping[str, Any], secrets: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """The environment a container's process sees: envFrom Secrets (from `secrets`), then env."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        ref = source.get("secretRef") or {}
        env.update(secrets.get(ref.get("name"), {}))
    for entry in container.get("env") or []:
        if "value" in entry:
            env[entry["name"]] = expand(entry["value"], mapping_func_for(env))
    return env
