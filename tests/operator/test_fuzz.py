"""A seeded, bounded fuzz of validate, render and the planner: no input raises anything but the
validation error, none hangs, and every rejection names a field path.

2,000 mutants of the examples, as documents (the operator's path: kopf hands it JSON) and as YAML
text (`fathom validate`'s path), some under an admin policy (the Helm chart's defaults). Every valid
mutant is rendered and planned, with an empty and with a garbage status; every invalid one is
planned too (the Invalid status). Deterministic: the same seed gives the same 2,000 cases.
"""

from __future__ import annotations

import copy
import random
import re
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from fathom_operator import plan as planning
from fathom_operator.render import render_recipe
from fathom_operator.validate import RecipeInvalid, load_recipe, validate_document
from tests.support.helpers import EXAMPLE_FILES

pytestmark = pytest.mark.timeout(180)

SEED = 20261214
CASES = 2000
CASE_LIMIT_S = 2.0  # a case slower than this is a hang
TOTAL_LIMIT_S = 60.0
T0 = datetime(2026, 3, 1, tzinfo=UTC)
# A field path from the document's root (`spec.stages[3].data`, a root key, `(document)`), or the
# place in the YAML text (`recipe: line 3, column 5`) when the text never became a document.
FIELD_PATH = re.compile(r"^(\(document\)|recipe(: line \d+, column \d+|: document)?|defaults\.policy|[^.\[\s][^\n]*)$")
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
POLICY = {"storage": {"uri": "s3://runs", "endpoint": "https://minio.example:9000"},
          "policy": {"secretNames": ["s3-credentials", "hf-token", "openai"], "tolerationKeys": ["nvidia.com/gpu"]}}


def deep(depth: int) -> Any:
    value: Any = "x"
    for i in range(depth):
        value = [value] if i % 2 else {"a": value}
    return value


HOSTILE: list[Any] = [
    None, True, False, 0, -1, 1, 2**31, 2**63, -(2**63) - 1, 10**30, 1e308, -1e308, float("nan"), float("inf"),
    -0.0, 1e-320, 0.5, "", " ", "x" * 70, "corpus\n", "UPPER", "a_b", "a..b", "-a", "a-", "$(AWS_SECRET_ACCESS_KEY)",
    "$$x^2$$", "s3://KEY:SECRET@bucket", "https://user:key@host/v1", "s3://", "s3://b/../x", "file:///etc/shadow",
    "hf://org/x@main", "gs://bucket", "\x00", "😀" * 10, "memory", "cpu", "nvidia.com/gpu", "kubernetes.io/x",
    "requests.nvidia.com/gpu", "9e99", "1e400", "NaN", "Infinity", "-1", "500m", "64Gi", "0", [], {}, [1, 2],
    {"a": 1}, ["x"] * 50, {"nodeAffinity": {"x": deep(5)}}, deep(40), "y" * 300_000, "base",
    "Exists", "NoExecute", "http://127.0.0.1:1", "registry.example/x:1", "bad image", 7.5, 99999,
]
UNKNOWN_KEYS = ["bogus", "status", "$(X)", "", "spec", "type", "name", "a" * 300]
TEXT_TAILS = ["\nspec:\n  budgetUSD: 1\n", "\n" + "[" * 400 + "]" * 400, "\n: :\n", "\n&a [*a]\n",
              "\nx: !!python/object:os.system {}\n", "\nbudgetUSD: " + "9" * 6000 + "\n", "\n---\nkind: X\n",
              "\n\t- tab\n", "\nx: *undefined\n", "\nx: 2001-12-14\n"]


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a document (iterative)."""
    found, stack = [], [(node, prefix)]
    while stack:
        value, path = stack.pop()
        found.append(path)
        if isinstance(value, dict) and len(path) < 12:
            stack.extend((v, (*path, k)) for k, v in value.items())
        elif isinstance(value, list) and len(path) < 12:
            stack.extend((v, (*path, i)) for i, v in enumerate(value))
    return found


def get(doc: Any, path: tuple) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def hostile(rng: random.Random) -> Any:
    if rng.random() < 0.03:
        return deep(600)  # built fresh: too deep for copy.deepcopy
    return copy.deepcopy(rng.choice(HOSTILE))


def gentle(rng: random.Random, value: Any) -> Any:
    """A plausible edit of a leaf, so that many mutants stay valid and reach render and the planner."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return rng.choice([1, 2, 3, 4, 8, 16, value + 1])
    if isinstance(value, float):
        return round(rng.random(), 3)
    if isinstance(value, str):
        return value + rng.choice([" $(AWS_SECRET_ACCESS_KEY)", " $$x^2$$", "$", " ünï", ""])
    return value


def mutate(rng: random.Random, doc: dict, plausible: bool = False) -> dict:
    for _ in range(rng.randint(1, 3)):
        target = rng.choice(paths(doc))
        if not target:
            continue
        parent, key = get(doc, target[:-1]), target[-1]
        if plausible:
            parent[key] = gentle(rng, parent[key])
            continue
        op = rng.random()
        if op < 0.55:
            parent[key] = hostile(rng)
        elif op < 0.7 and isinstance(parent, dict):
            del parent[key]
        elif op < 0.8 and isinstance(parent, dict):
            parent[rng.choice(UNKNOWN_KEYS)] = hostile(rng)
        elif op < 0.87 and isinstance(parent, list):
            parent.append(copy.deepcopy(rng.choice(parent)))  # a duplicate stage, source, model...
        elif op < 0.93:
            value = parent[key]
            parent[key] = [value] if not isinstance(value, list) else {"k": value}  # the wrong container
        else:
            stages = doc.get("spec", {}).get("stages") if isinstance(doc.get("spec"), dict) else None
            if isinstance(stages, list) and stages and isinstance(stages[0], dict):
                n = rng.choice([50, 199, 201, 500])
                first = copy.deepcopy(stages[0])
                chain = [dict(first, name=f"s{i}", type="curate", preset="curriculum",
                              data=f"s{i - 1}" if i else "s3://b/samples/") for i in range(n)]
                for stage in chain:
                    stage.pop("sources", None)
                doc["spec"]["stages"] = chain
    return doc


def to_text(rng: random.Random, doc: dict) -> str | None:
    try:
        text = yaml.dump(doc, Dumper=DUMPER, sort_keys=False, allow_unicode=True)
    except (RecursionError, yaml.YAMLError, ValueError):
        return None
    op = rng.random()
    if op < 0.3:
        text += rng.choice(TEXT_TAILS)
    elif op < 0.45 and text:
        cut = rng.randrange(len(text))
        text = text[:cut] + rng.choice(["", ":", "\n  - ", "'", "{", "\x00", "&a", "*a", "!!"]) + text[cut:]
    elif op < 0.55:
        lines = text.splitlines()
        i = rng.randrange(len(lines))
        lines.insert(i, lines[i])  # a duplicated line: often a duplicate key
        text = "\n".join(lines)
    return text


def run_case(rng: random.Random, seed_doc: dict, index: int) -> tuple[str, list[str]]:
    """One mutant through everything; returns (outcome, error paths)."""
    doc = mutate(rng, copy.deepcopy(seed_doc), plausible=index % 4 == 3)
    defaults = POLICY if index % 3 == 0 else None
    text = to_text(rng, doc) if index % 5 < 2 else None
    try:
        recipe = load_recipe(text, defaults=defaults) if text is not None else validate_document(doc, defaults)
    except RecipeInvalid as exc:
        assert exc.errors, "a rejection without errors"
        spec = doc.get("spec") if isinstance(doc, dict) else None
        parsed = planning.parse("r", "ml", spec, defaults)  # the operator's path (its own name and namespace)
        result = planning.plan(planning.Inputs(name="r", namespace="ml", uid="u", generation=1, parsed=parsed,
                                               status=None, jobs=[], pods=[], facts={}, now=T0))
        assert result.status["phase"] == "Failed" or not isinstance(parsed, list)
        return "rejected", [e.path for e in exc.errors]
    render_recipe(recipe, namespace="ml")
    name = recipe.metadata.name
    parsed = planning.parse(name, "ml", recipe.spec.model_dump(by_alias=True, exclude_unset=True), defaults)
    for status in (None, {"stages": ["garbage"], "conditions": 3, "cost": {"usd": "x"}}):
        planning.plan(planning.Inputs(name=name, namespace="ml", uid="u", generation=1, parsed=parsed, status=status,
                                      jobs=[], pods=[], facts={}, now=T0))
    return "valid", []


def test_fuzzed_recipes_never_crash_hang_or_reject_without_a_field_path():
    rng = random.Random(SEED)
    seeds = [yaml.safe_load(path.read_text()) for path in EXAMPLE_FILES]
    outcomes = {"valid": 0, "rejected": 0}
    pathless: list[tuple[int, str]] = []
    slowest = (0.0, -1)
    began = time.monotonic()
    for index in range(CASES):
        started = time.monotonic()
        outcome, error_paths = run_case(rng, seeds[index % len(seeds)], index)  # any other exception fails here
        outcomes[outcome] += 1
        pathless += [(index, p) for p in error_paths if not FIELD_PATH.match(p)]
        slowest = max(slowest, (time.monotonic() - started, index))
    elapsed = time.monotonic() - began
    assert sum(outcomes.values()) == CASES >= 2000
    assert pathless == [], pathless[:10]
    assert slowest[0] < CASE_LIMIT_S, f"case {slowest[1]} took {slowest[0]:.2f}s"
    assert elapsed < TOTAL_LIMIT_S, f"{CASES} cases took {elapsed:.1f}s"
    assert outcomes["valid"] >= 100 and outcomes["rejected"] >= 1000, outcomes  # both paths well exercised
