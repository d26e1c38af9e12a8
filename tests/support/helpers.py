"""Small helpers shared by the tests (no fixtures with side effects here)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]  # the repository root; the one definition tests import
EXAMPLES = ROOT / "manifests" / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))


def example(name: str) -> dict[str, Any]:
    """A fresh copy of an example recipe as a plain document."""
    return copy.deepcopy(yaml.safe_load((EXAMPLES / name).read_text()))


def stage_index(doc: dict[str, Any], name: str) -> int:
    return next(i for i, s in enumerate(doc["spec"]["stages"]) if s["name"] == name)
