"""The daemon's HTTP side: `/healthz` for readiness, `/livez` for liveness, `/metrics` for Prometheus, and
the HTML report (read-only: GET and HEAD of the files the report wrote, nothing else).

Figures are gauges set from each stored run (seeded from history at start), so a scrape never
touches the database; `/healthz` does, briefly, because "database reachable" is what it reports.
Names follow Prometheus conventions: base units (seconds, bytes, joules), `_total` for counters.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from monitor.core.runs import RUN_STATUSES, RunRecord
from monitor.core.series import FindingRecord

log = logging.getLogger(__name__)

# `mode`: infer (one call at a time), train (a training step), load (`concurrency` callers at once).
SERIES = ("model", "variant", "device", "batch_size", "mode", "concurrency")
# A gauge per percentile, labelled `percentile`: `quantile` is reserved for summaries, whose _sum and
# _count a latest-run figure does not have (promtool rejects it on any other type).
PERCENTILES = (("50", "latency_ms_p50"), ("90", "latency_ms_p90"), ("99", "latency_ms_p99"))


class RunMetricsExporter:
    """Prometheus gauges and counters fed with run records."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Gauge("perfguard_latency_seconds",
                             "Latency of one call (a training step in mode train), latest run",
                             [*SERIES, "percentile"], registry=self.registry)
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
        self.relative = Gauge("perfguard_relative_latency_ratio",
                              "p50 of the model over its frozen reference timed in the same rounds, latest run",
                              SERIES, registry=self.registry)
        self.probe = Gauge("perfguard_host_probe_seconds", "Host-speed probe: seconds per call of its fixed work",
                           ["host", "probe"], registry=self.registry)
        self.host_events = Gauge("perfguard_open_host_events", "Open host events: the host itself got slower or faster",
                                 ["host"], registry=self.registry)

    def start_counting(self, models: Iterable[str]) -> None:
        """Every model's run counters at 0 from the start: `increase()` sees a model's first run
        after a restart only if the series existed before it."""
        for model in models:
            for status in RUN_STATUSES:
                self.runs.labels(model, status)

    def observe_host_events(self, open_per_host: dict[str, int]) -> None:
        """Set the open host-event count of each host (zero for a host whose events are over)."""
        for host, count in open_per_host.items():
            self.host_events.labels(host).set(count)

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
        series = (record.model, record.variant, record.device, str(record.batch_size), record.mode,
                  str(record.concurrency))
        m = record.metrics
        for percentile, field in PERCENTILES:
            value = getattr(m, field)
            if value is not None:
                self.latency.labels(*series, percentile).set(value / 1000)
        _set(self.throughput, series, m.throughput_per_s)
        _set(self.relative, series, m.rel_to_reference)
        host = record.env.host or "unknown"
        for probe, value in (("blas", m.probe_blas_ms), ("python", m.probe_python_ms), ("cuda", m.probe_cuda_ms)):
            _set(self.probe, (host, probe), None if value is None else value / 1000)
        _set(self.peak_rss, series, None if m.peak_rss_mb is None else m.peak_rss_mb * 2**20)
        _set(self.energy, series, m.energy_j_per_inference)


def _set(gauge: Gauge, series: tuple[str, ...], value: float | None) -> None:
    if value is not None:
        gauge.labels(*series).set(value)


SITE_TYPES = {".html": "text/html; charset=utf-8", ".png": "image/png"}
IDLE_TIMEOUT_S = 30.0
MAX_CONNECTIONS = 32  # handler threads at once; a connection past them is answered 503 and closed


def site_file(site: Path, url_path: str) -> Path | None:
    """The report file an URL path names, or None: only .html and .png files inside `site`, no
    hidden files, no way out of the folder (`..`, symlinks, encoded slashes)."""
    path = unquote(urlsplit(url_path).path)
    if "\x00" in path:
        return None  # no file has a NUL in its name (and the OS would refuse it with ValueError)
    if path in ("", "/"):
        path = "/index.html"
    parts = [p for p in path.split("/") if p]
    if any(p.startswith(".") or "\\" in p for p in parts) or not parts:
        return None
    candidate = site.joinpath(*parts)
    try:
        resolved, root = candidate.resolve(strict=True), site.resolve(strict=True)
    except OSError:
        return None
    if root not in resolved.parents or not resolved.is_file() or resolved.suffix not in SITE_TYPES:
        return None
    return resolved


class _BoundedServer(ThreadingHTTPServer):
    """One thread per connection, but never more than MAX_CONNECTIONS: idle or trickling clients
    (each held up to IDLE_TIMEOUT_S) cannot make the daemon grow a thread per socket. A connection
    past the bound gets a short 503 from the accepting thread, without a thread of its own."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], endpoints: Endpoints) -> None:
        super().__init__(address, _Handler)
        self.endpoints = endpoints
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                                b"Content-Length: 5\r\nRetry-After: 1\r\nConnection: close\r\n\r\nbusy\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    content_type: str
    body: bytes
    cache: str | None = None


@dataclass(frozen=True, slots=True)
class Endpoints:
    """What the daemon serves: `/metrics`; `/healthz` (also `/readyz`), readiness: can runs be taken
    and kept now; `/livez`, liveness: the process serves and its scheduler runs, nothing else (no
    database query), so a database outage makes an orchestrator stop routing, not restart the daemon
    and lose what it holds for later; and with `site`, the report written there at `/`."""

    exporter: RunMetricsExporter
    health: Callable[[], dict[str, Any]]
    alive: Callable[[], bool]
    site: Path | None = None

    def answer(self, path: str) -> Reply:
        if path == "/metrics":
            return Reply(200, CONTENT_TYPE_LATEST, generate_latest(self.exporter.registry))
        if path == "/livez":
            ok = self.alive()
            return Reply(200 if ok else 503, "application/json", json.dumps({"alive": ok}).encode())
        if path in ("/healthz", "/readyz"):
            report = self.health()
            return Reply(200 if report["healthy"] else 503, "application/json",
                         json.dumps(report, default=str).encode())
        found = site_file(self.site, path) if self.site is not None else None
        if found is not None:
            try:
                return Reply(200, SITE_TYPES[found.suffix], found.read_bytes(), cache="no-cache")
            except OSError:  # replaced or removed by a refresh between the lookup and the read
                return Reply(404, "text/plain", b"not found\n")
        hint = b"not found: try " + (b"/, " if self.site else b"") + b"/healthz, /livez or /metrics\n"
        return Reply(404, "text/plain", hint)


class _Handler(BaseHTTPRequestHandler):
    # An idle or trickling client gives up its thread after this long (a socket timeout on every
    # read and write), instead of holding one thread per open connection forever.
    timeout = IDLE_TIMEOUT_S
    server: _BoundedServer

    def handle(self) -> None:
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the client went away or stalled: nothing to answer, nothing to log

    def do_GET(self) -> None:
        self._reply(self.server.endpoints.answer(self.path), send_body=True)

    def do_HEAD(self) -> None:
        self._reply(self.server.endpoints.answer(self.path), send_body=False)

    def _reply(self, reply: Reply, send_body: bool) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        if reply.cache:
            self.send_header("Cache-Control", reply.cache)
        self.end_headers()
        if send_body:
            self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - scrapes are not news
        log.debug("http: " + format, *args)


def serve(
    listen: str, exporter: RunMetricsExporter, health: Callable[[], dict[str, Any]], site: Path | None = None,
    alive: Callable[[], bool] = lambda: True,
) -> ThreadingHTTPServer:
    """Start the endpoints (`Endpoints`) on `host:port` in a background thread; the server (call
    shutdown() to stop)."""
    host, _, port = listen.rpartition(":")
    server = _BoundedServer((host.strip("[]") or "127.0.0.1", int(port)), Endpoints(exporter, health, alive, site))
    threading.Thread(target=server.serve_forever, name="perfguard-http", daemon=True).start()
    return server
