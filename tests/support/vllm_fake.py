"""tests/support/fake_vllm/vllm (a recording stand-in for vLLM's offline API) importable as `vllm`
in this process and in the engine processes it spawns, with every event also logged to a file so
events from those processes can be read back. In a test module:

    @pytest.fixture
    def fake_vllm(monkeypatch, tmp_path):
        yield from vllm_fake.installed(monkeypatch, tmp_path)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

FAKE_VLLM_PATH = Path(__file__).resolve().parent / "fake_vllm"


class FakeVllm:
    def __init__(self, module: ModuleType, log: Path) -> None:
        self.module = module
        self.log = log

    def events(self, *kinds: str) -> list[dict]:
        """Every recorded event of these kinds (all kinds when none given), from every process, in order."""
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        events = [json.loads(line) for line in lines]
        return [e for e in events if not kinds or e["event"] in kinds]


def _forget_vllm() -> None:
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        del sys.modules[name]


def installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeVllm]:
    _forget_vllm()
    monkeypatch.syspath_prepend(str(FAKE_VLLM_PATH))
    log = tmp_path / "vllm-events.jsonl"
    monkeypatch.setenv("FAKE_VLLM_LOG", str(log))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("FAKE_VLLM_FAIL_ON_DEVICES", raising=False)
    import vllm

    yield FakeVllm(vllm, log)
    _forget_vllm()
