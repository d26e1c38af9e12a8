"""The train image builds flash-attn from source against its own torch: the version it compiles is
the `flash` extra's pin, with nvcc from a CUDA of torch's major version, before the final install
(which then finds it satisfied instead of building it again without torch)."""

from __future__ import annotations

import re
import tomllib

from tests.support.helpers import ROOT

DOCKERFILE = (ROOT / "images" / "train" / "Dockerfile").read_text()
EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_the_compiled_flash_attn_is_the_extras_pin():
    [pin] = EXTRAS["flash"]
    version = re.search(r"^ARG FLASH_ATTN_VERSION=(\S+)$", DOCKERFILE, re.M).group(1)
    assert pin == f"flash-attn=={version}"
    build = DOCKERFILE.index("FLASH_ATTENTION_FORCE_BUILD=TRUE")
    assert "--no-build-isolation" in DOCKERFILE[build:DOCKERFILE.index("\n", DOCKERFILE.index("pip install", build))]
    final = re.search(r'pip install -c constraints.txt "\.\[([a-z,]+)\]"', DOCKERFILE)
    assert final.start() > build and "flash" in final.group(1).split(",")


def test_nvcc_matches_torchs_cuda_major():
    # PyPI's torch 2.13.0 depends on cuda-toolkit 13.0.x; an nvcc of another major version fails
    # torch's extension builds (flash-attn here, DeepSpeed's JIT ops at run time).
    assert re.search(r"^torch==2\.13\.0$", (ROOT / "constraints.txt").read_text(), re.M)
    assert re.search(r"^FROM nvidia/cuda:13\.0\.\d+-[a-z-]*devel-ubuntu24\.04$", DOCKERFILE, re.M)
