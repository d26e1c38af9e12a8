"""Fixtures of the tests that run the operator against kmock (each module sets the kmock marker)."""

from __future__ import annotations

import pytest

from fathom_operator.plan import Options
from tests.support.operator_harness import Clock, make_config, setup_cluster, write_kubeconfig


@pytest.fixture
def cluster(kmock):
    setup_cluster(kmock)
    return kmock


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def config(cluster, clock, tmp_path):
    """The operator on a fast resync, its store on local disk, a one-minute retry backoff."""
    return make_config(write_kubeconfig(tmp_path / "kubeconfig", cluster.url), clock, tmp_path / "store",
                       options=Options(backoff_seconds=60.0))
