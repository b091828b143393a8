"""Benchmark registered models now and store every run, failed ones included.

The one function the CLI's `run` and the daemon's jobs call: plan the series, make sure each
model is registered, run each series in its own worker, and store each run as soon as it ends, so an
interruption loses at most the run in flight.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import DBAPIError, OperationalError

from monitor.config import LoadedConfig
from monitor.harness.protocol import VariantSpec
from monitor.harness.runner import run_worker, to_records
from monitor.registry import PlannedBenchmark, active_variant, plan, series_references
from storage import findings, queries
from storage.db import Database
from storage.records import RunRecord

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
) -> list[RunRecord]:
    """Run the named models (all when empty) and store each run; the stored records, in order.

    Each model is benchmarked as its active variant (an optimised one once an action promoted it).
    Once `cancel` is set, the worker in flight is aborted (and stored as such) and no other starts.
    `store` saves one run, setting its `run_id` (the daemon's may spool it instead, leaving it None).
    `known_variants` (model -> active variant) is kept up to date from the database and, when the
    database is unreachable, used instead of it, so that the benchmark still runs and is spooled.
    With `idempotency_key` (a fleet job's), each series' run is stored under that key and the series,
    and a series already stored under it (the job was redelivered) is not benchmarked again;
    `details` are added to each run's details (e.g. which worker ran it).
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
    done: dict[str, int] = {}
    if idempotency_key is not None:
        done = queries.stored_run_ids(db, [f"{idempotency_key}/{p.key.label()}" for p in planned])
    for index, item in enumerate(planned):
        if cancel is not None and cancel.is_set():
            break
        series_key = f"{idempotency_key}/{item.key.label()}" if idempotency_key is not None else None
        if series_key in done:
            log.info("%s: already stored as run %d (a redelivered job), not benchmarked again", series_key,
                     done[series_key])
            continue
        progress.begin(index, len(planned), item)
        update: Callable[[str, int], None] = progress.update
        outcome = run_worker(
            item.job,
            timeout_s=item.timeout_s,
            memory_limit_mb=item.memory_limit_mb,
            pin_allocator=loaded.config.harness.pin_allocator,
            cwd=loaded.base_dir,
            progress=update,
            cancel=cancel,
        )
        for record in to_records(item.job, outcome, item.key.variant):
            record.idempotency_key = series_key
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
