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
from monitor.harness.protocol import VariantSpec
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


def store_with_retries(db: Database, record: RunRecord) -> None:
    """Save a run, riding out a short database outage (a restart, a lock held by another writer).

    A run costs a benchmark to make; giving up on the first error would throw it away. Each attempt is
    one transaction, so a failed one leaves nothing behind; the last error is raised.
    """
    for attempt in range(1, STORE_ATTEMPTS + 1):
        try:
            queries.save_run(db, record)
            return
        except OperationalError as exc:
            if attempt == STORE_ATTEMPTS:
                raise
            log.warning("storing the run of %s failed (attempt %d of %d), retrying: %s",
                        record.model, attempt, STORE_ATTEMPTS, exc)
            time.sleep(0.5 * 2**attempt)


def prepare_model(
    loaded: LoadedConfig, planned: PlannedBenchmark, cancel: threading.Event | None = None,
    pool: WorkerPool | None = None,
) -> tuple[dict[str, Any] | None, WorkerOutcome | None]:
    """Run a model's prepare step in a worker of its own: (its report, None) when it succeeded, else
    (its report, the failed outcome its series are stored with)."""
    step = planned.model.prepare
    assert step is not None
    job = replace(planned.job, subjects=[], mode="prepare", prepare=step, reference=None, reference_id=None)
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
    store: Callable[[Database, RunRecord], None] = store_with_retries,
    known_variants: dict[str, VariantSpec] | None = None,
    idempotency_key: str | None = None,
    details: dict[str, Any] | None = None,
    prepared: set[str] | None = None,
    stopping: threading.Event | None = None,
    pool: WorkerPool | None = None,
) -> list[RunRecord]:
    """Run the named models (all when empty) and store each run; the stored records, in order.

    `cancel` aborts the benchmark in flight; `stopping` only keeps the next series from starting (a
    stop request lets the running one finish within the stop timeout, but starts nothing new).

    Each model is benchmarked as its active variant (an optimised one once an action promoted it).
    Once `cancel` is set, the worker in flight is aborted (and stored as such) and no other starts.
    `store` saves one run, setting its `run_id` (the daemon's may spool it instead, leaving it None).
    `known_variants` (model -> active variant) is kept up to date from the database and, when the
    database is unreachable, used instead of it, so that the benchmark still runs and is spooled.
    With `idempotency_key` (a fleet job's), each series' run is stored under that key and the series,
    and a series already stored under it (the job was redelivered) is not benchmarked again;
    `details` are added to each run's details (e.g. which worker ran it). A model with a `prepare`
    step has it run first, once per `prepared` set (the caller's: the daemon keeps one for its life;
    without one, once per call), untimed; its cost goes into the details of the model's next run.
    Workers are forked from the caller's `pool` when it gives one (worker_pool.py), else spawned.
    """
    progress = progress or BenchmarkProgress()
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
    planned = plan(loaded, names, variants, references)
    stored: list[RunRecord] = []
    prepared = set() if prepared is None else prepared
    preparing: dict[str, tuple[dict[str, Any] | None, WorkerOutcome | None]] = {}
    done: dict[str, int] = {}
    if idempotency_key is not None:
        done = queries.stored_run_ids(db, [f"{idempotency_key}/{p.key.label()}" for p in planned])
    for index, item in enumerate(planned):
        if any(event is not None and event.is_set() for event in (cancel, stopping)):
            if index:
                log.info("stopping: %d series of %s not started", len(planned) - index, item.model.name)
            break
        series_key = f"{idempotency_key}/{item.key.label()}" if idempotency_key is not None else None
        if series_key in done:
            log.info("%s: already stored as run %d (a redelivered job), not benchmarked again", series_key,
                     done[series_key])
            continue
        progress.begin(index, len(planned), item)
        update: Callable[[str, int], None] = progress.update
        step = item.model.prepare
        if step is not None and f"{item.model.name}:{step}" not in prepared and item.model.name not in preparing:
            preparing[item.model.name] = prepare_model(loaded, item, cancel, pool)
            if preparing[item.model.name][1] is None:
                prepared.add(f"{item.model.name}:{step}")
        report, failure = preparing.get(item.model.name, (None, None))
        if failure is not None:
            outcome = failure  # every series of the model fails with the step's error
        else:
            outcome = run_worker(
                item.job,
                timeout_s=item.timeout_s,
                memory_limit_mb=item.memory_limit_mb,
                pin_allocator=loaded.config.harness.pin_allocator,
                cwd=loaded.base_dir,
                progress=update,
                cancel=cancel,
                pool=pool,
            )
        if report is not None:
            preparing[item.model.name] = (None, failure)  # the report goes with this series' run only
        for record in to_records(item.job, outcome, item.key.variant):
            if report is not None:
                record.details["prepare"] = report
            # Every run carries a key: a store retried after its commit (a reply lost with the
            # connection, a crash between the spool's commit and its unlink) finds it instead of
            # storing it twice. A fleet job's key is the job's; a local run's is its own.
            record.idempotency_key = series_key or f"run:{uuid.uuid4().hex}"
            if details:
                record.details.update(details)
            if record.status == "ok" and "measurement" not in record.details:
                record.details["measurement"] = {"basis": "absolute",
                                                 "why": item.absolute_why or "the database was unavailable"}
            store(db, record)
            _note_lost_reference(db, item, record)
            if record.status != "ok":
                log.info("run %s of %s (batch %d) %s: %s", record.run_id, record.model,
                            record.batch_size, record.status, record.error_summary)
            progress.end(record)
            stored.append(record)
    return stored
