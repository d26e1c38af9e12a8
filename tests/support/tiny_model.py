"""Session-scoped tiny model shared by every test that samples or trains.

Register in tests/conftest.py with:  from tests.support.tiny_model import tiny_model_dir  # noqa: F401
Building the tokenizer + random Qwen2 takes a few seconds, so it happens once per session.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from fathom_jobs.tiny import build_tiny_model

    # A fixed place under the session's base temp: modules that import this fixture directly
    # (before it is registered in conftest) still share one build, which is skipped if present.
    return build_tiny_model(tmp_path_factory.getbasetemp() / "tiny-model")
