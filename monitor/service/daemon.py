"""`perfguard daemon`: benchmark every model on its schedule, for months, until told to stop.

The main thread only waits for signals: SIGTERM/SIGINT stop (no new jobs; the benchmark in flight may
finish within `stop_timeout_s`, else it is aborted and stored as such; exit 0), SIGHUP or a changed
config file reloads (a bad new config is logged and the old one kept). Benchmarks run on the
scheduler's per-device threads, each in its own worker process; this process never imports torch.
"""

from __future__ import annotations

import logging
import shutil
import signal
import threading
import time
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

from sqlalchemy import text

from monitor.config import ConfigError, LoadedConfig
from monitor.core.hosts import HostEventRecord
from monitor.core.runs import RunRecord
from monitor.harness.worker_pool import WorkerPool
from monitor.service.executors import make_executor
from monitor.service.http import RunMetricsExporter, serve
from monitor.service.loading import load_service_config
from monitor.service.local_runs import BuiltRules, LocalRuns, RunEnded, RunEvent
from monitor.service.lock import DaemonLock
from monitor.service.reporting import ReportKeeper, report_dir
from monitor.service.scheduler import BenchmarkScheduler, next_due
from monitor.service.spool import UNAVAILABLE, RunSpool
from monitor.user_errors import EXIT_UNREACHABLE, explain, first_line
from storage import findings as findings_store
from storage import host_events, queries
from storage.db import Database
from storage.lease import DatabaseLease

log = logging.getLogger(__name__)

MIN_FREE_BYTES = 64 * 2**20  # below this, the next spooled run may not fit: not ready
OVERDUE_GRACE_S = 600.0

CONFIG_POLL_S = 2.0
NEVER = datetime.min.replace(tzinfo=UTC)


class Daemon:
    """The running service: config, database, scheduler, and the signals that steer them."""

    def __init__(self, loaded: LoadedConfig, db: Database):
        self.loaded = loaded
        self.db = db
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()
        self.cancel = threading.Event()  # set when a stop has waited long enough: aborts workers
        daemon_config = loaded.config.daemon
        self.scheduler = BenchmarkScheduler(self.dispatch, daemon_config.misfire_grace_s)
        self._seen_runs: dict[str, datetime] | None = None
        self.exporter = RunMetricsExporter()
        self.spool = RunSpool(loaded.base_dir / daemon_config.spool_dir)
        self.workers = WorkerPool()  # warm workers: a run does not import torch again
        self.rules = BuiltRules()
        self.reports = ReportKeeper()
        # The local executor's jobs; they tell this daemon what happened through `on_run_event`.
        self.local = LocalRuns(lambda: self.loaded, db, self.spool.store, self.workers, self.reports,
                               self.stop_requested, self.cancel, self.rules, listeners=[self.on_run_event])
        self.executor = make_executor(loaded.config.executor, self.local.run)
        self.last_success: datetime | None = None
        self._last_finished: dict[str, datetime] = {}  # model -> its newest run's end (any status)
        self._started = datetime.now(UTC)
        self._waiting_for_database = True  # until its schema is checked at start
        self._http: ThreadingHTTPServer | None = None
        self.refused_config: str | None = None  # why the config file on disk is not the one running
        # The file as loaded: an edit made while the daemon still starts (waits for its database,
        # writes its first report) is a change to reload too.
        self._config_mtime = _mtime(loaded.path)
        self.lease = DatabaseLease(db)  # one daemon per database, across hosts (PostgreSQL)
        self.exit_code = 0

    def health(self) -> dict[str, Any]:
        """What /healthz reports: healthy when the scheduler runs, the database answers, every run is
        safe (stored or spooled), the spool's disk has room, and no model is overdue."""
        try:
            with self.db.session(readonly=True) as session:
                session.execute(text("SELECT 1"))
            reachable, problem = True, None
        except Exception as exc:  # noqa: BLE001 - any driver error means "unreachable", reported
            reachable, problem = False, f"{type(exc).__name__}: {exc}"
        executor = self.executor.health()
        problems = self.problems()
        if self._waiting_for_database:
            problems.insert(0, "starting: waiting for the database")
        return {
            "healthy": self.scheduler.running and reachable and executor["healthy"] and not problems,
            "problems": problems,
            "scheduler_running": self.scheduler.running,
            "executor": executor,
            "database_reachable": reachable,
            "database_error": problem,
            "last_successful_run": self.last_success.isoformat() if self.last_success else None,
            "spooled_runs": len(self.spool.files()),
            "next_runs": {
                name: when.isoformat() if when else None for name, when in self.scheduler.next_runs().items()
            },
        }

    def problems(self, now: datetime | None = None) -> list[str]:
        """What makes the daemon unfit to keep runs now, beyond an unreachable database."""
        now = now or datetime.now(UTC)
        found = []
        if self.refused_config is not None:
            why = "; ".join(line.strip() for line in self.refused_config.splitlines() if line.strip())
            found.append(f"config reload refused, the previous config still runs: {why}")
        if not self.lease.held and not self._waiting_for_database:
            found.append("the database lock went with its connection: taken again when the database answers")
        if self.spool.held:
            found.append(
                f"{len(self.spool.held)} run(s) held in memory: neither the database nor the spool "
                f"({self.spool.folder}) could take them"
            )
        try:
            free = shutil.disk_usage(self.spool.folder).free
            if free < MIN_FREE_BYTES:
                found.append(f"the spool's disk has {free / 2**20:.0f} MiB free ({self.spool.folder})")
        except OSError as exc:
            found.append(f"the spool folder cannot be checked: {exc}")
        for rule in self.rules.built():
            for hung_model, thread in list(rule.hung.items()):
                if thread.is_alive():  # a plugin that never returned holds a thread (and maybe a core)
                    found.append(
                        f"rule {rule.label} on {hung_model}: still running past its time limit of {rule.timeout_s:g} s"
                    )
        models = self.loaded.config.models
        # However the schedule falls, every other model may run once before this one: past that, the
        # daemon is stuck (a hung job, a starved scheduler), not busy.
        queue_s = sum(m.run_limit_s for m in models) + OVERDUE_GRACE_S
        for model in models:
            last = self._last_finished.get(model.name)
            # What fell due before this daemon started counts from the start (it was not running).
            due = max(next_due(model.schedule, last), self._started) if last is not None else self._started
            if (now - due).total_seconds() > queue_s:
                found.append(
                    f"{model.name}: overdue, no run finished since {last or 'the start'} (due {due:%Y-%m-%d %H:%M} UTC)"
                )
        return found

    def seed_metrics(self) -> None:
        """Latest stored figures per series, so /metrics is complete right after a restart."""
        self.exporter.start_counting(m.name for m in self.loaded.config.models)
        for model in self.loaded.config.models:
            for record in reversed(queries.history(self.db, model.name, limit=4 * model.series_count)):
                self.note_run(record, count=False)
            self.exporter.observe_findings(model.name, findings_store.findings(self.db, model.name))
        self.exporter.observe_host_events(host_events.open_event_counts(self.db))

    def note_run(self, record: RunRecord, count: bool = True, stored: bool = True) -> None:
        """Feed a run to /metrics and, once it is in the database, to /healthz's last success."""
        self.exporter.observe(record, count=count)
        previous = self._last_finished.get(record.model)
        if previous is None or record.finished_at > previous:
            self._last_finished[record.model] = record.finished_at
        if stored and record.status == "ok" and (self.last_success is None or record.finished_at > self.last_success):
            self.last_success = record.finished_at

    def dispatch(self, name: str) -> None:
        """A scheduled run fell due: hand it to the executor (run here, or enqueue for the fleet)."""
        model = next((m for m in self.loaded.config.models if m.name == name), None)
        if model is None or self.stop_requested.is_set():
            return
        log.info("run of %s due", name)  # when the schedule fired; "stored" says when the run ended
        self.executor.submit(model, datetime.now(UTC))

    def on_run_event(self, event: RunEvent) -> None:
        """A local run ended (to /metrics and /healthz) or was followed up (its findings to /metrics)."""
        if isinstance(event, RunEnded):
            self.note_run(event.record, stored=event.record.run_id is not None)
            _log_run(event.record)
            return
        name, done = event.model, event.done
        if done.check is not None:
            self.exporter.observe_findings(name, done.check.findings)
            self.exporter.observe_host_events(
                {**dict.fromkeys(done.check.hosts, 0), **_open_per_host(done.check.host_events)}
            )
        if done.actions:
            self.exporter.observe_findings(name, findings_store.findings(self.db, name))

    def watch_fleet_runs(self) -> None:
        """With fleet workers, runs arrive through the database: feed the new ones to /metrics, then
        refresh the report and send alerts for their models (the workers did the rest)."""
        if self.loaded.config.executor.kind != "celery":
            return
        latest = queries.last_run_times(self.db)
        if self._seen_runs is None:  # the first look, at start-up: that history is already seeded
            self._seen_runs = dict(latest)
            return
        for name, started in latest.items():
            seen = self._seen_runs.get(name, NEVER)
            if started <= seen:
                continue
            self._seen_runs[name] = started
            for record in reversed(queries.history(self.db, name, limit=50)):
                if record.started_at > seen:
                    self.note_run(record)
            self.exporter.observe_findings(name, findings_store.findings(self.db, name))
            self.exporter.observe_host_events(host_events.open_event_counts(self.db))
            self.reports.publish(self.db, self.loaded, name)

    def sync_schedule(self) -> None:
        self.scheduler.sync(
            self.loaded.config.models, queries.last_run_times(self.db), self.loaded.config.daemon.misfire_grace_s
        )
        email = self.loaded.config.email
        self.scheduler.sync_cron_task(
            ReportKeeper.DIGEST_JOB,
            email.digest_cron if email else None,
            lambda: self.reports.digest(self.db, self.loaded),
        )

    def reload(self) -> None:
        try:
            loaded = load_service_config(self.loaded.path)
        except ConfigError as exc:
            self.refuse_config(str(exc))
            return
        if loaded.storage_url() != self.loaded.storage_url():
            self.refuse_config("storage.url cannot change while the daemon runs")
            return
        if loaded.config.executor != self.loaded.config.executor:
            self.refuse_config("[executor] cannot change while the daemon runs")
            return
        previous, self.loaded = self.loaded, loaded
        try:
            self.sync_schedule()
        except UNAVAILABLE as exc:
            self.loaded = previous
            self.reload_requested.set()  # try again at the next poll
            log.warning("config reload postponed, the database is unavailable: %s", str(exc).splitlines()[0])
            return
        self.exporter.start_counting(m.name for m in loaded.config.models)
        self.refused_config = None
        log.info("config reloaded from %s", loaded.path)

    def refuse_config(self, why: str) -> None:
        """Keep the running config, and say why in the log and on /healthz until a reload succeeds:
        an edit that never took effect should not pass for one that did."""
        self.refused_config = why
        log.error("config reload refused, keeping the running config:\n%s", why)

    def serve(self) -> None:
        """Run until a stop is requested, then stop gracefully."""
        site = report_dir(self.loaded) if self.loaded.config.reports.refresh else None
        # Serving first: while the database is away at start, /livez answers and /healthz says why
        # the daemon is not ready, instead of the process failing (and a supervisor looping on it).
        self._http = serve(
            self.loaded.config.daemon.listen,
            self.exporter,
            self.health,
            site,
            alive=lambda: self._waiting_for_database or self.scheduler.running,
        )
        listen = self.loaded.config.daemon.listen
        log.info("health and metrics on http://%s/healthz and /metrics", listen)
        started = leased = False
        try:
            started = self.wait_for_database()
            leased = started and self.keep_lease()
        finally:
            if not leased:  # a stop, a database that is not merely away, or another daemon's
                self.reports.close()
                self.executor.shutdown()
                self._http.shutdown()
        if not started:
            log.info("perfguard daemon stopped before its database answered")
        if not leased:
            return
        self.flush_spool()  # runs a previous daemon could not store
        self.seed_metrics()
        self.watch_fleet_runs()  # where fleet runs stand now
        self.sync_schedule()
        self.scheduler.start()
        if site is not None and self.reports.refresh(self.db, self.loaded) is not None:
            log.info("report on http://%s/ (files in %s)", listen, site)
        log.info(
            "perfguard daemon started: %d model(s), database %s",
            len(self.loaded.config.models),
            self.db.display_location(),
        )
        while not self.stop_requested.wait(CONFIG_POLL_S):
            if not self.keep_lease():
                break
            self.flush_spool()
            self.executor.poll()
            try:
                self.watch_fleet_runs()
            except UNAVAILABLE as exc:
                log.warning("cannot read new fleet runs, the database is unavailable: %s", str(exc).splitlines()[0])
            current = _mtime(self.loaded.path)
            if self.reload_requested.is_set() or current != self._config_mtime:
                self.reload_requested.clear()
                self._config_mtime = current
                self.reload()
        self.stop()

    def keep_lease(self) -> bool:
        """Hold the database's lease (PostgreSQL: one daemon per database, wherever it runs); False
        when another daemon holds it, which ends this one with exit status 1. An outage takes the
        lease with the connection: benchmarks go on into the spool, and it is taken again on return."""
        if self.lease.alive():
            return True
        try:
            holder = self.lease.acquire()
        except UNAVAILABLE:
            return True  # said on /healthz; nobody else can take it while the server is away either
        if holder is None:
            log.info("holding the database lock of %s", self.db.display_location())
            return True
        log.error("another perfguard daemon holds %s: %s; stopping", self.db.display_location(), holder)
        self.exit_code = 1
        return False

    def wait_for_database(self) -> bool:
        """Bring the schema up to date, waiting (and saying so) while the database cannot be reached;
        False when a stop came first. The benchmarks need it: it names each model's active variant."""
        warned = False
        while True:
            try:
                self.db.upgrade()
                if warned:
                    log.info("the database answers again: starting")
                self._waiting_for_database = False
                return True
            except UNAVAILABLE as exc:
                if explain(exc).code != EXIT_UNREACHABLE:
                    raise  # a damaged file does not mend by waiting: said in one line by the command
                if not warned:
                    log.warning(
                        "the database cannot be reached, waiting for it (checked every %g s): %s",
                        CONFIG_POLL_S,
                        first_line(exc),
                    )
                    warned = True
            if self.stop_requested.wait(CONFIG_POLL_S):
                return False

    def flush_spool(self) -> None:
        """Store runs that waited for the database, once it answers again."""
        if not self.spool.files():
            return
        for record in self.spool.flush(self.db):
            self.note_run(record, count=False)  # counted when it was spooled

    def stop(self) -> None:
        timeout = self.loaded.config.daemon.stop_timeout_s
        log.info("stopping: no new benchmarks; waiting up to %g s for the one in flight", timeout)
        self.scheduler.pause()
        self.reports.close()  # never waits for a mail server; unsent alerts go out after the restart
        finished = self.local.wait_idle(timeout)
        if not finished:
            log.warning("stop timeout reached: aborting the benchmark in flight")
        # Also aborts a job that slipped in between the pause and the wait, instead of waiting for it.
        self.cancel.set()
        self.scheduler.shutdown()
        self.executor.shutdown()
        self.workers.close()
        self.flush_spool()  # what cannot be stored now stays spooled for the next start
        self.spool.rescue()  # and what even the spool could not take goes elsewhere, or into the log
        if self._http is not None:
            self._http.shutdown()
        log.info("perfguard daemon stopped")


def _log_run(record: RunRecord) -> None:
    """One log line per run: model, batch size, run id, outcome."""
    if record.run_id is None:
        log.warning("run of %s (batch %d, %s) spooled until the database is back", record.model,
                    record.batch_size, record.status)
    elif record.status == "ok":
        log.info("run %s stored: model=%s batch=%d status=ok p50_ms=%.4g flags=%s", record.run_id,
                 record.model, record.batch_size, record.metrics.latency_ms_p50 or 0.0, ",".join(record.flags) or "-")
    else:
        log.warning("run %s stored: model=%s batch=%d status=%s error=%s", record.run_id,
                    record.model, record.batch_size, record.status, record.error_summary)


def _open_per_host(events: list[HostEventRecord]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for event in events:
        counts[event.host] = counts.get(event.host, 0) + (event.state == "open")
    return counts


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def run_daemon(loaded: LoadedConfig) -> int:
    """Hold the per-database lock, open storage, serve until SIGTERM/SIGINT; the exit status."""
    url = loaded.storage_url()
    db = Database.open(url, upgrade=False)  # connects on first use: the daemon may start before its database
    try:
        with DaemonLock(url, db.display_location()):
            daemon = Daemon(loaded, db)

            def on_stop(signum: int, _frame: FrameType | None) -> None:
                log.info("received %s", signal.Signals(signum).name)
                daemon.stop_requested.set()

            def on_reload(_signum: int, _frame: FrameType | None) -> None:
                daemon.reload_requested.set()

            signal.signal(signal.SIGTERM, on_stop)
            signal.signal(signal.SIGINT, on_stop)
            signal.signal(signal.SIGHUP, on_reload)
            started = time.monotonic()
            try:
                daemon.serve()
            finally:
                daemon.lease.release()
            log.info("ran for %.0f s", time.monotonic() - started)
    finally:
        db.close()
    return daemon.exit_code


