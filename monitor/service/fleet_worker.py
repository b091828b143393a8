"""A fleet worker's side of a scheduled run (Celery executor): benchmark the model, store each series
once, then follow up (monitor/service/followup.py) on the hardware that ran it, as the daemon does for
its own runs."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from monitor.config import LoadedConfig
from monitor.harness.worker_pool import WorkerPool
from monitor.service.benchmark import benchmark_models
from monitor.service.followup import follow_up
from rules.discovery import ConfiguredRule, configured_rules
from storage.db import Database

log = logging.getLogger(__name__)


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
            follow_up(db, loaded, [model], self._rules, records=records, pool=self.pool())
        except Exception:
            log.exception("the follow-up of %s's runs failed (the runs are stored)", model)
        log.info("job %s done on %s: runs %s", key, self.queue, [r.run_id for r in records])
        return {"key": key, "runs": [r.run_id for r in records], "queue": self.queue}
