"""Prometheus metrics: recipes by phase, per-stage cost and time, reconcile errors and latency."""

from __future__ import annotations

import socket
import urllib.request

from fathom_operator.metrics import OperatorMetrics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STATUS = {
    "phase": "Running",
    "stages": {
        "sft-shortest": {"phase": "Running", "startTime": "2026-11-20T00:00:00Z", "gpuHours": 655.25,
                         "costUSD": 1854.36, "wastedGPUHours": 16.0, "failures": 1, "preemptions": 2},
        "corpus": {"phase": "Succeeded", "startTime": "2026-11-19T00:00:00Z",
                   "completionTime": "2026-11-19T01:30:00Z", "gpuHours": 0.0, "costUSD": 0.24},
    },
}


def test_scrape_shows_phases_costs_and_durations():
    metrics = OperatorMetrics()
    metrics.recipes.record("ml", "fathom-r1-14b", STATUS)
    metrics.recipes.record("ml", "other", {"phase": "Failed"})
    metrics.reconcile_errors.labels(namespace="ml").inc()
    with metrics.reconcile_seconds.time():
        pass
    port = _free_port()
    server = metrics.serve(port, host="127.0.0.1")
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        health = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read()
    finally:
        server.shutdown()
    assert health == b"ok\n"
    assert 'fathom_recipes{phase="Running"} 1.0' in text and 'fathom_recipes{phase="Failed"} 1.0' in text
    stage = 'namespace="ml",recipe="fathom-r1-14b",stage="sft-shortest"'
    assert f"fathom_stage_gpu_hours{{{stage}}} 655.25" in text
    assert f"fathom_stage_cost_usd{{{stage}}} 1854.36" in text
    assert f"fathom_stage_wasted_gpu_hours{{{stage}}} 16.0" in text
    assert f"fathom_stage_retries_total{{{stage}}} 1.0" in text
    assert f"fathom_stage_preemptions_total{{{stage}}} 2.0" in text
    assert 'fathom_stage_duration_seconds{namespace="ml",recipe="fathom-r1-14b",stage="corpus"} 5400.0' in text
    assert 'fathom_reconcile_errors_total{namespace="ml"} 1.0' in text
    assert "fathom_reconcile_duration_seconds_count 1.0" in text


def test_deleted_recipes_leave_no_series():
    metrics = OperatorMetrics()
    metrics.recipes.record("ml", "gone", STATUS)
    metrics.recipes.forget("ml", "gone")
    samples = [s for family in metrics.recipes.collect() for s in family.samples if s.labels.get("recipe") == "gone"]
    assert samples == []
