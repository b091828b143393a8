"""Runs waiting for the database: a folder of JSON files, written when storing fails, flushed in order.

A benchmark costs minutes of a host's time, so a database outage must not throw its result away.
Each run waiting is one file (written to a temporary name, then renamed, so a crash leaves either
the whole file or none); the daemon flushes the folder oldest first as soon as the database answers
again, removing each file only after its run is committed.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from storage import queries
from storage.db import Database
from storage.records import RunRecord

log = logging.getLogger(__name__)

# What an unreachable or restarting database raises; anything else is a bug and must surface.
UNAVAILABLE = (DBAPIError, PoolTimeoutError)


class RunSpool:
    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        # The daemon's main thread flushes while benchmark threads store: one at a time, or a
        # waiting run could be inserted twice.
        self._lock = threading.RLock()

    def files(self) -> list[Path]:
        return sorted(self.folder.glob("*.json"))

    def add(self, record: RunRecord) -> Path:
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
        tmp = self.folder / f".{name}.tmp"
        tmp.write_text(json.dumps(record.to_storable(), allow_nan=False), encoding="utf-8")
        os.replace(tmp, self.folder / name)
        return self.folder / name

    def flush(self, db: Database) -> list[RunRecord]:
        """Store waiting runs oldest first; stop at the first that fails. The runs stored now."""
        with self._lock:
            return self._flush(db)

    def _flush(self, db: Database) -> list[RunRecord]:
        stored = []
        for path in self.files():
            record = RunRecord.from_storable(json.loads(path.read_text(encoding="utf-8")))
            try:
                queries.save_run(db, record)
            except UNAVAILABLE as exc:
                log.warning("database still unavailable, %d run(s) wait in %s: %s",
                            len(self.files()), self.folder, str(exc).splitlines()[0])
                break
            path.unlink()
            stored.append(record)
            log.info("run %s stored from the spool: model=%s batch=%d status=%s", record.run_id,
                     record.model, record.batch_size, record.status)
        return stored

    def store(self, db: Database, record: RunRecord) -> None:
        """Store `record` now (after any that wait), or spool it; `record.run_id` says which."""
        with self._lock:
            if self.files():
                self._flush(db)
            if not self.files():  # nothing waits: store now, unless the database is still away
                try:
                    queries.save_run(db, record)
                    return
                except UNAVAILABLE as exc:
                    log.warning("database unavailable, run of %s spooled: %s", record.model,
                                str(exc).splitlines()[0])
            self.add(record)  # behind any that wait, keeping the order of runs
