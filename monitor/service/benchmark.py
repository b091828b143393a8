"""Benchmark registered models now and store every run, failed ones included.

The one function the CLI's `run` and the daemon's jobs call: plan the series, make sure each
model is registered, run each series in its own worker, and store each run as soon as it ends, so an
interruption loses at most the run in flight.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from sqlalchemy.exc import DBAPIError, OperationalError

from monitor.config import LoadedConfig
from monitor.core.runs import RunRecord
from monitor.harness.protocol import PrepareJob, VariantSpec
from monitor.harness.runner import WorkerOutcome, run_worker, to_records
from monitor.harness.worker_pool import WorkerPool
from monitor.registry import PlannedBenchmark, active_variant, plan, series_references
from storage import findings, queries
from storage.db import Database

log = logging.getLogger(__name__)


class BenchmarkProgress:
    """Receives progress; the CLI prints it on stderr, the daemon logs it. Default: silent."""

    def begin(self, index: int, total: int, planned: PlannedBenchmark) -> None:
        """Called before a series' worker starts."""

    def update(self, phase: str, samples: int) -> None:
        """Called as the worker reports its phase (setup, warmup, sampling, collect) and sample count."""

    def end(self, record: RunRecord) -> None:
        """Called once each run is stored."""


STORE_ATTEMPTS = 4


def store_with_retries(db: Database, record: RunRecord) -> RunRecord:
    """Save a run, riding out a short database outage (a restart, a lock held by another writer).

    A run costs a benchmark to make; giving up on the first error would throw it away. Each attempt is
    one transaction, so a failed one leaves nothing behind; the last error is raised.
    """
    for attempt in range(1, STORE_ATTEMPTS + 1):
        try:
            return replace(record, run_id=queries.save_run(db, record))
        except OperationalError as exc:
            if attempt == STORE_ATTEMPTS:
                raise
            log.warning("storing the run of %s failed (attempt %d of %d), retrying: %s",
                        record.model, attempt, STORE_ATTEMPTS, exc)
            time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable: the last attempt returns or raises")


def prepare_model(
    loaded: LoadedConfig, planned: PlannedBenchmark, cancel: threading.Event | None = None,
    pool: WorkerPool | None = None,
) -> tuple[dict[str, Any] | None, WorkerOutcome | None]:
    """Run a model's prepare step in a worker of its own: (its report, None) when it succeeded, else
    (its report, the failed outcome its series are stored with)."""
    step = planned.model.prepare
    assert step is not None
    job = planned.job.as_job(PrepareJob, subjects=[], prepare=step)
    outcome = run_worker(job, timeout_s=planned.timeout_s, memory_limit_mb=planned.memory_limit_mb,
                         pin_allocator=loaded.config.harness.pin_allocator, cwd=loaded.base_dir, cancel=cancel,
                         pool=pool)
    report = outcome.result.prepared if outcome.result is not None else None
    if outcome.status == "ok" and report is not None:
        log.info("prepared %s with %s in %.1f s (peak %.0f MiB), not timed", planned.model.name, step,
                 report.seconds, report.peak_rss_mb)
        return {"step": step, "status": "ok", **report.to_dict(), "lock_wait_s": outcome.lock_wait_s}, None
    outcome.error = f"prepare step {step} failed: {outcome.error or outcome.status}"
    outcome.result = None
    log.warning("%s: %s", planned.model.name, outcome.error.splitlines()[0])
    return {"step": step, "status": outcome.status, "peak_rss_mb": outcome.peak_rss_mb}, outcome


def _note_lost_reference(db: Database, planned: PlannedBenchmark, record: RunRecord) -> None:
    """Mark the series' reference lost when the worker could not time it (logged once)."""
    measurement = record.details.get("measurement", {})
    if not measurement.get("reference_lost") or planned.job.reference_id is None:
        return
    try:
        if findings.mark_reference_lost(db, planned.job.reference_id, measurement["why"]):
            log.warning("%s %s: %s; the series reads probe-normalised latencies until a baseline is "
                        "accepted (perfguard baseline accept %s)", record.model, planned.key.label(),
                        measurement["why"], record.model)
    except DBAPIError as exc:  # the next run finds it again
        log.warning("could not mark the reference of %s lost: %s", record.model, str(exc).splitlines()[0])


def benchmark_models(
    loaded: LoadedConfig,
    db: Database,
    names: list[str] | None = None,
    progress: BenchmarkProgress | None = None,
    cancel: threading.Event | None = None,
    store: Callable[[Database, RunRecord], RunRecord] = store_with_retries,
    known_variants: dict[str, VariantSpec] | None = None,
    idempotency_key: str | None = None,
    details: dict[str, Any] | None = None,
    prepared: set[str] | None = None,
    stopping: threading.Event | None = None,
    pool: WorkerPool | None = None,
) -> list[RunRecord]:
    """Run the named models (all when empty), each as its active variant, and store each run; the
    stored records, in order.

    `cancel` aborts the worker in flight (stored as such) and starts no other; `stopping` only keeps
    the next series from starting. `store` saves one run and gives it back with its `run_id` (the
    daemon's may spool it instead, without one). `known_variants` (model -> active variant) is kept
    up to date and used while the database is unreachable, so that runs still happen and are spooled.
    With `idempotency_key` (a fleet job's) each series is stored under that key and not benchmarked
    again when already stored (a redelivered job); `details` go into each run's. A `prepare` step
    runs once per `prepared` set (the daemon keeps one for its life), untimed, its cost in the next
    run's details. Workers are forked from `pool` when given (worker_pool.py), else spawned.
    """
    progress = progress or BenchmarkProgress()
    planned = _plan(loaded, db, names, known_variants)
    stored: list[RunRecord] = []
    preparer = _Preparer(loaded, set() if prepared is None else prepared, cancel, pool)
    keys = [f"{idempotency_key}/{p.key.label()}" for p in planned] if idempotency_key is not None else []
    done = queries.stored_run_ids(db, keys) if keys else {}
    for index, item in enumerate(planned):
        if any(event is not None and event.is_set() for event in (cancel, stopping)):
            if index:
                log.info("stopping: %d series of %s not started", len(planned) - index, item.model.name)
            break
        series_key = f"{idempotency_key}/{item.key.label()}" if idempotency_key is not None else None
        if series_key in done:
            log.info("%s: already stored as run %d (a redelivered job)", series_key, done[series_key])
            continue
        progress.begin(index, len(planned), item)
        report, failure = preparer.before(item)
        if failure is not None:
            outcome = failure  # every series of the model fails with the step's error
        else:
            outcome = run_worker(item.job, timeout_s=item.timeout_s, memory_limit_mb=item.memory_limit_mb,
                                 pin_allocator=loaded.config.harness.pin_allocator, cwd=loaded.base_dir,
                                 progress=progress.update, cancel=cancel, pool=pool)
        for made in to_records(item.job, outcome, item.key.variant):
            record = store(db, _describe(made, item, series_key, details, report))
            _note_lost_reference(db, item, record)
            if record.status != "ok":
                log.info("run %s of %s (batch %d) %s: %s", record.run_id, record.model,
                         record.batch_size, record.status, record.error_summary)
            progress.end(record)
            stored.append(record)
    return stored


def _plan(
    loaded: LoadedConfig, db: Database, names: list[str] | None, known_variants: dict[str, VariantSpec] | None
) -> list[PlannedBenchmark]:
    """The series to run, each as its model's active variant with its reference; with
    `known_variants`, kept up to date and used instead while the database is unreachable."""
    variants = known_variants if known_variants is not None else {}
    references = None
    try:
        with db.session() as session:
            for model in {p.model.name: p.model for p in plan(loaded, names)}.values():
                queries.register_model(session, model.name, model.factory, model.device)
                variants[model.name] = active_variant(session, model.name)
        references = series_references(db, plan(loaded, names, variants))
    except DBAPIError as exc:
        if known_variants is None:
            raise
        log.warning("database unavailable before benchmarking, using the last known variants: %s",
                    str(exc).splitlines()[0])
    return plan(loaded, names, variants, references)


class _Preparer:
    """Each model's prepare step, run before its first series once per `prepared` set (the caller's);
    its report goes with that series' run only, its failure with every series of the model."""

    def __init__(self, loaded: LoadedConfig, prepared: set[str], cancel: threading.Event | None,
                 pool: WorkerPool | None) -> None:
        self.loaded, self.prepared, self.cancel, self.pool = loaded, prepared, cancel, pool
        self.results: dict[str, tuple[dict[str, Any] | None, WorkerOutcome | None]] = {}

    def before(self, item: PlannedBenchmark) -> tuple[dict[str, Any] | None, WorkerOutcome | None]:
        """(report, failure) of the step before this series: None, None when there is nothing to say."""
        name, step = item.model.name, item.model.prepare
        if step is not None and f"{name}:{step}" not in self.prepared and name not in self.results:
            self.results[name] = prepare_model(self.loaded, item, self.cancel, self.pool)
            if self.results[name][1] is None:
                self.prepared.add(f"{name}:{step}")
        report, failure = self.results.get(name, (None, None))
        if report is not None:
            self.results[name] = (None, failure)
        return report, failure


def _describe(record: RunRecord, item: PlannedBenchmark, series_key: str | None, details: dict[str, Any] | None,
              report: dict[str, Any] | None) -> RunRecord:
    """What a run's record carries besides its numbers: the prepare step's report, its key, the
    caller's details, and on what basis it was measured."""
    described = dict(record.details)
    if report is not None:
        described["prepare"] = report
    if details:
        described.update(details)
    if record.status == "ok" and "measurement" not in described:
        described["measurement"] = {"basis": "absolute", "why": item.absolute_why or "the database was unavailable"}
    # Every run carries a key: a store retried after its commit (a reply lost with the connection, a
    # crash between the spool's commit and its unlink) finds it instead of storing it twice. A fleet
    # job's key is the job's; a local run's is its own.
    return replace(record, details=described, idempotency_key=series_key or f"run:{uuid.uuid4().hex}")
