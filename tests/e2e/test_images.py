"""Images: each Dockerfile builds from files that exist, pins through constraints.txt, runs as a
non-root user, carries the version label; and the CPU-resolvable images' requirements resolve."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib

import pytest

from fathom_operator import __version__
from tests.support.helpers import ROOT

IMAGES = sorted(p.parent.name for p in (ROOT / "images").glob("*/Dockerfile"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
CONSTRAINTS = {
    name.lower().replace("_", "-"): version
    for name, version in (line.split("==", 1) for line in (ROOT / "constraints.txt").read_text().splitlines()
                          if "==" in line and not line.startswith("#"))
}


def dockerfile(image: str) -> str:
    return (ROOT / "images" / image / "Dockerfile").read_text()


def test_every_image_family_has_a_dockerfile():
    assert IMAGES == ["data", "infer", "merge", "operator", "train"]


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_copies_only_existing_files(image):
    for line in dockerfile(image).splitlines():
        if line.startswith("COPY") and "--from=" not in line:
            *sources, _dest = line.split()[1:]
            for src in sources:
                assert (ROOT / src).exists(), f"images/{image}/Dockerfile copies {src}, which does not exist"


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_pins_runs_as_non_root_and_labels_the_version(image):
    text = dockerfile(image)
    assert "-c constraints.txt" in text
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and not users[-1].startswith(("root", "0"))
    assert f"ARG VERSION={__version__}" in text and 'org.opencontainers.image.version="${VERSION}"' in text
    for extras in re.findall(r'"\.\[([a-z,]+)\]"', text):
        for extra in extras.split(","):
            assert extra in EXTRAS, f"images/{image} installs unknown extra {extra}"


def test_vllm_only_in_gpu_images_and_extras():
    assert not any("vllm" in dep for extra in ("operator", "data", "infer", "train", "merge", "dev")
                   for dep in EXTRAS[extra])
    assert "vllm" in dockerfile("infer") and "vllm" in dockerfile("train")
    assert "vllm" not in dockerfile("data") + dockerfile("merge") + dockerfile("operator")


@pytest.mark.parametrize("extra", ["operator", "data", "merge"])
def test_cpu_image_requirements_resolve_with_the_pins(tmp_path, extra):
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--report", str(report), "-c", str(ROOT / "constraints.txt"), f".[{extra}]"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    resolved = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
                for i in json.loads(report.read_text())["install"]}
    for name, version in resolved.items():
        pinned = CONSTRAINTS.get(name)
        if pinned:
            assert version.split("+")[0] == pinned, f"{name} resolved to {version}, constraints.txt pins {pinned}"
