"""One model's scheduled run and what follows it, wherever it runs: in the daemon (local executor)
or in a fleet worker (Celery executor). Both benchmark, store, then check the new history, freeze the
reference, attribute new regressions and let the rules act, on the hardware that ran the model."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from monitor.config import LoadedConfig
from monitor.detection.attribution import confirm_pending, ensure_references, references_wanted
from monitor.detection.check import CheckResult, check_models
from monitor.harness.worker_pool import WorkerPool
from monitor.optimize.rollback import damaged_weights, roll_back
from monitor.service.benchmark import benchmark_models
from monitor.service.respond import Response, respond
from rules.discovery import ConfiguredRule, configured_rules
from storage.actions import NothingToRollBack
from storage.db import Database
from storage.queries import BASELINE
from storage.records import RunRecord

log = logging.getLogger(__name__)


@dataclass(slots=True)
class AfterRuns:
    """What followed a model's runs: the check, and the rules' response (None when not evaluated)."""

    check: CheckResult | None = None
    response: Response | None = None


def after_runs(
    db: Database,
    loaded: LoadedConfig,
    name: str,
    records: list[RunRecord],
    rules: list[ConfiguredRule],
    cancel: threading.Event,
    pool: WorkerPool | None = None,
) -> AfterRuns:
    """After a model's runs: detect changes, freeze its reference once, attribute new regressions,
    then evaluate the rules and run the actions they decide (monitor/service/respond.py)."""
    done = AfterRuns()
    fall_back_from_damaged_weights(db, loaded, name, records)
    if not any(r.status == "ok" and r.run_id is not None for r in records) or cancel.is_set():
        return done
    done.check = check_models(db, loaded, [name])
    if references_wanted(loaded) and not cancel.is_set():
        ensure_references(db, loaded, [name], cancel, pool)
    if loaded.config.detection.confirm and not cancel.is_set():
        confirm_pending(db, loaded, done.check.findings, cancel, pool)
    if loaded.config.rules and not cancel.is_set():
        new = {f.id for f in done.check.new if f.id is not None}
        done.response = respond(db, loaded, name, done.check.findings, new, rules, cancel, pool=pool)
    return done


def fall_back_from_damaged_weights(db: Database, loaded: LoadedConfig, name: str, records: list[RunRecord]) -> None:
    """The active variant's weights failed their check: every run of it would fail until someone
    rolls back by hand, so roll back now (the rollback is an action: its alert goes out) and the next
    run measures the previous variant."""
    damaged = next((r for r in records if r.status == "failed" and r.variant != BASELINE
                    and damaged_weights(r.error)), None)
    if damaged is None:
        return
    why = f"the weights of variant {damaged.variant} failed their check (run {damaged.run_id})"
    try:
        record = roll_back(db, loaded, name, trigger="integrity", why=why)
    except NothingToRollBack:
        return
    log.error("%s: %s; rolled back to %s (action %s)", name, why, record.to_variant, record.id)


class FleetJobs:
    """The fleet worker's side of a job: its config, one database and one pool of warm workers per
    worker process, built rules."""

    def __init__(self, loaded: LoadedConfig, queue: str, open_db: Callable[[str], Database] = Database.open):
        self.loaded = loaded
        self.queue = queue
        self._open_db = open_db
        self._db: tuple[int, Database] | None = None  # (pid, database): a forked pool process opens its own
        # (pid, pool): a forked pool process starts its own; its fork servers end with the process.
        self._pool: tuple[int, WorkerPool] | None = None
        self._rules: list[ConfiguredRule] | None = None
        self._prepared: set[str] = set()  # models whose prepare step ran in this worker process

    def db(self) -> Database:
        if self._db is None or self._db[0] != os.getpid():
            self._db = (os.getpid(), self._open_db(self.loaded.storage_url()))
        return self._db[1]

    def pool(self) -> WorkerPool:
        if self._pool is None or self._pool[0] != os.getpid():
            self._pool = (os.getpid(), WorkerPool())
        return self._pool[1]

    def run(self, model: str, key: str) -> dict[str, Any]:
        """Benchmark `model` for the scheduled run `key`, store each series once, then follow up."""
        loaded = self.loaded
        if model not in {m.name for m in loaded.config.models}:
            raise LookupError(f"model {model!r} is not in this worker's config {loaded.path}")
        db = self.db()
        where = {"queue": self.queue, "worker": socket.gethostname()}
        records = benchmark_models(loaded, db, [model], idempotency_key=key, details={"executor": where},
                                   prepared=self._prepared, pool=self.pool())
        if self._rules is None:
            self._rules = configured_rules(loaded.config)
        try:
            after_runs(db, loaded, model, records, self._rules, threading.Event(), self.pool())
        except Exception:
            log.exception("the follow-up of %s's runs failed (the runs are stored)", model)
        log.info("job %s done on %s: runs %s", key, self.queue, [r.run_id for r in records])
        return {"key": key, "runs": [r.run_id for r in records], "queue": self.queue}
