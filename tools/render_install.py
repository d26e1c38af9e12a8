"""Render manifests/install.yaml (for users without Helm) from the chart's defaults.

`make manifests` runs it; tests/e2e/test_chart.py fails when the committed file differs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import helm_python
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "fathom-operator"
NAMESPACE = "fathom-system"
RELEASE = "fathom"


def install_objects() -> list[dict]:
    rendered = helm_python.Chart.load(str(CHART)).render({}, name=RELEASE, namespace=NAMESPACE)
    objects: list[dict] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}]
    for crd in sorted((CHART / "crds").glob("*.yaml")):
        objects += [d for d in yaml.safe_load_all(crd.read_text()) if d]
    for path in sorted(rendered):
        if path.endswith(".yaml"):
            objects += [d for d in yaml.safe_load_all(rendered[path]) if d]
    return objects


def install_yaml() -> str:
    header = "# Generated from charts/fathom-operator with default values by tools/render_install.py. Do not edit.\n"
    return header + yaml.safe_dump_all(install_objects(), sort_keys=False, width=120)


if __name__ == "__main__":
    target = ROOT / "manifests" / "install.yaml"
    target.write_text(install_yaml())
    print(f"wrote {target.relative_to(ROOT)}", file=sys.stderr)
