"""The daemon's HTTP side: `/healthz` for liveness probes and `/metrics` for Prometheus.

Figures are gauges set from each stored run (seeded from history at start), so a scrape never
touches the database; `/healthz` does, briefly, because "database reachable" is what it reports.
Names follow Prometheus conventions: base units (seconds, bytes, joules), `_total` for counters.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from storage.findings import FindingRecord
from storage.records import RunRecord

log = logging.getLogger(__name__)

SERIES = ("model", "variant", "device", "batch_size")
QUANTILES = (("0.5", "latency_ms_p50"), ("0.9", "latency_ms_p90"), ("0.99", "latency_ms_p99"))


class RunMetricsExporter:
    """Prometheus gauges and counters fed with run records."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Gauge("perfguard_latency_seconds", "Latency of one forward pass, latest run",
                             [*SERIES, "quantile"], registry=self.registry)
        self.throughput = Gauge("perfguard_throughput_items_per_second", "Items per second at p50, latest run",
                                SERIES, registry=self.registry)
        self.peak_rss = Gauge("perfguard_peak_rss_bytes", "Peak resident memory of the worker, latest run",
                              SERIES, registry=self.registry)
        self.energy = Gauge("perfguard_energy_joules_per_inference", "GPU energy per forward pass, latest run",
                            SERIES, registry=self.registry)
        self.runs = Counter("perfguard_runs", "Runs stored since the daemon started", ["model", "status"],
                            registry=self.registry)
        self.last_run = Gauge("perfguard_last_run_timestamp_seconds", "Start time of the latest run",
                              ["model"], registry=self.registry)
        self.findings = Gauge("perfguard_open_findings", "Open findings of change detection",
                              ["model", "metric", "verdict"], registry=self.registry)

    def observe_findings(self, model: str, findings: Iterable[FindingRecord]) -> None:
        """Set the open-finding counts of one model from its stored findings (zero where none now)."""
        counts: dict[tuple[str, str], int] = {}
        for finding in findings:
            key = (finding.metric, finding.verdict)
            counts[key] = counts.get(key, 0) + (finding.state == "open")
        for (metric, verdict), count in counts.items():
            self.findings.labels(model, metric, verdict).set(count)

    def observe(self, record: RunRecord, count: bool = True) -> None:
        """Take in a stored run; `count=False` when seeding from history (not a run of this daemon)."""
        if count:
            self.runs.labels(record.model, record.status).inc()
        self.last_run.labels(record.model).set(record.started_at.timestamp())
        if record.status != "ok":
            return
        series = (record.model, record.variant, record.device, str(record.batch_size))
        m = record.metrics
        for quantile, field in QUANTILES:
            value = getattr(m, field)
            if value is not None:
                self.latency.labels(*series, quantile).set(value / 1000)
        _set(self.throughput, series, m.throughput_per_s)
        _set(self.peak_rss, series, None if m.peak_rss_mb is None else m.peak_rss_mb * 2**20)
        _set(self.energy, series, m.energy_j_per_inference)


def _set(gauge: Gauge, series: tuple[str, ...], value: float | None) -> None:
    if value is not None:
        gauge.labels(*series).set(value)


def serve(listen: str, exporter: RunMetricsExporter, health: Callable[[], dict[str, Any]]) -> ThreadingHTTPServer:
    """Start the endpoint on `host:port` in a background thread; the server (call shutdown() to stop)."""
    host, _, port = listen.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            if self.path == "/metrics":
                self._reply(200, CONTENT_TYPE_LATEST, generate_latest(exporter.registry))
            elif self.path == "/healthz":
                report = health()
                body = json.dumps(report, default=str).encode()
                self._reply(200 if report["healthy"] else 503, "application/json", body)
            else:
                self._reply(404, "text/plain", b"not found: try /healthz or /metrics\n")

        def _reply(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - scrapes are not news
            log.debug("http: " + format, *args)

    server = ThreadingHTTPServer((host.strip("[]") or "127.0.0.1", int(port)), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="perfguard-http", daemon=True).start()
    return server
