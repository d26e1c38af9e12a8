"""Session fixtures shared across test modules and layers: the tiny model and the local S3 server.

Every test under tests/e2e/ is marked `e2e` here, so `pytest -m "not e2e"` runs the fast layers.
"""

from pathlib import Path

import pytest

from tests.support.s3server import s3_server  # noqa: F401
from tests.support.tiny_model import tiny_model_dir  # noqa: F401

E2E = Path(__file__).resolve().parent / "e2e"


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(E2E):
            item.add_marker(pytest.mark.e2e)
