"""Prometheus metrics of the operator, served with /healthz on one port (this thread is up; the
chart's probes use kopf's liveness endpoint instead, which answers from the operator's event loop).

Per-recipe gauges are not kept as mutable gauge series (which leak label sets when recipes are
deleted); the operator records each recipe's latest status here, and a collector turns the
snapshot into samples at scrape time. Reconcile counters and latency are ordinary metrics.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

PHASES = ("Pending", "Running", "Succeeded", "Failed", "Suspended")


def _seconds_between(start: str | None, end: str | None, now: datetime) -> float | None:
    if not start:
        return None
    begin = datetime.fromisoformat(start.replace("Z", "+00:00"))
    finish = datetime.fromisoformat(end.replace("Z", "+00:00")) if end else now
    return max(0.0, (finish - begin).total_seconds())


class RecipeCollector(Collector):
    """Samples computed from the latest status of every recipe the operator handles."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._statuses: dict[tuple[str, str], dict[str, Any]] = {}

    def record(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        with self._lock:
            self._statuses[(namespace, name)] = status

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._statuses.pop((namespace, name), None)

    def collect(self) -> Iterator[Any]:
        with self._lock:
            snapshot = dict(self._statuses)
        now = datetime.now(UTC)
        stage_labels = ["namespace", "recipe", "stage"]
        phases = GaugeMetricFamily("fathom_recipes", "Recipes by phase.", labels=["phase"])
        duration = GaugeMetricFamily("fathom_stage_duration_seconds", "Stage run time (so far, if running).", labels=stage_labels)
        gpu_hours = GaugeMetricFamily("fathom_stage_gpu_hours", "GPU-hours spent per stage, failed attempts included.", labels=stage_labels)
        usd = GaugeMetricFamily("fathom_stage_cost_usd", "USD spent per stage, failed attempts included.", labels=stage_labels)
        wasted = GaugeMetricFamily("fathom_stage_wasted_gpu_hours", "GPU-hours of failed and preempted attempts.", labels=stage_labels)
        retries = CounterMetricFamily("fathom_stage_retries", "Failed attempts retried (retry budget used).", labels=stage_labels)
        preemptions = CounterMetricFamily("fathom_stage_preemptions", "Attempts lost to preemption or eviction.", labels=stage_labels)
        counts = {phase: 0 for phase in PHASES}
        for (namespace, recipe), status in sorted(snapshot.items()):
            phase = status.get("phase") or "Pending"
            counts[phase] = counts.get(phase, 0) + 1
            for stage, st in sorted((status.get("stages") or {}).items()):
                labels = [namespace, recipe, stage]
                seconds = _seconds_between(st.get("startTime"), st.get("completionTime"), now)
                if seconds is not None:
                    duration.add_metric(labels, seconds)
                gpu_hours.add_metric(labels, float(st.get("gpuHours") or 0.0))
                usd.add_metric(labels, float(st.get("costUSD") or 0.0))
                wasted.add_metric(labels, float(st.get("wastedGPUHours") or 0.0))
                retries.add_metric(labels, float(st.get("failures") or 0))
                preemptions.add_metric(labels, float(st.get("preemptions") or 0))
        for phase, count in counts.items():
            phases.add_metric([phase], count)
        yield from (phases, duration, gpu_hours, usd, wasted, retries, preemptions)


class OperatorMetrics:
    """Everything the operator exports, on its own registry (tests create as many as they like)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.recipes = RecipeCollector()
        self.registry.register(self.recipes)
        self.reconcile_errors = Counter("fathom_reconcile_errors", "Reconciles that raised.",
                                        ["namespace"], registry=self.registry)
        self.reconcile_seconds = Histogram("fathom_reconcile_duration_seconds", "Reconcile latency.",
                                           registry=self.registry,
                                           buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.notifications = Counter("fathom_notifications", "Webhook notifications by result (sent, dropped).",
                                     ["webhook", "result"], registry=self.registry)

    def serve(self, port: int, host: str = "0.0.0.0") -> WSGIServer:
        """Serve /metrics and /healthz from a daemon thread; returns the server (for shutdown)."""
        metrics_app = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
            if environ.get("PATH_INFO") == "/healthz":
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [b"ok\n"]
            served: list[bytes] = metrics_app(environ, start_response)
            return served

        class QuietHandler(WSGIRequestHandler):
            def log_message(self, *args: Any) -> None:  # scrapes every 15 s would flood the log
                pass

        server = make_server(host, port, app, handler_class=QuietHandler)
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
        return server
