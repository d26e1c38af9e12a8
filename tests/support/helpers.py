"""Small helpers shared by the tests (no fixtures with side effects here)."""

from __future__ import annotations

import copy
import socket
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]  # the repository root; the one definition tests import
EXAMPLES = ROOT / "manifests" / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))
RECIPES = ROOT / "tests" / "support" / "recipes"  # recipes kept for tests only (not shipped examples)
TWO_PASSES = "fathom-r1-14b-two-passes.yaml"  # the 14B recipe with two parallel samplers, for planner tests


def example(name: str) -> dict[str, Any]:
    """A fresh copy of an example recipe (or of a test recipe under tests/support/recipes) as a plain document."""
    path = EXAMPLES / name if (EXAMPLES / name).exists() else RECIPES / name
    return copy.deepcopy(yaml.safe_load(path.read_text()))


def stage_index(doc: dict[str, Any], name: str) -> int:
    return next(i for i, s in enumerate(doc["spec"]["stages"]) if s["name"] == name)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())
