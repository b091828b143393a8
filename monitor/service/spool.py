"""Runs waiting for the database: a folder of JSON files, written when storing fails, flushed in order.

A benchmark costs minutes of a host's time, so a database outage must not throw its result away.
Each run waiting is one file (written to a temporary name, then renamed, so a crash leaves either
the whole file or none); the daemon flushes the folder oldest first as soon as the database answers
again, removing each file only after its run is committed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from monitor.core.runs import RunRecord
from storage import queries
from storage.db import Database

log = logging.getLogger(__name__)

# What an unreachable or restarting database raises; anything else is a bug and must surface.
UNAVAILABLE = (DBAPIError, PoolTimeoutError)


class RunSpool:
    def __init__(self, folder: Path, rescue: Path | None = None):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        # Where runs still held in memory go when the daemon stops: another file system when the
        # spool's is full (the temp folder), one per spool; flushed like the spool at the next start.
        digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
        self.rescue_folder = rescue or Path(tempfile.gettempdir()) / "perfguard-rescue" / digest
        self.clean()
        # The daemon's main thread flushes while benchmark threads store: one at a time, or a
        # waiting run could be inserted twice.
        self._lock = threading.RLock()
        # Runs that could be neither stored nor spooled (a full disk): kept here, retried at every
        # flush, and reported by /healthz until they are safe. Lost only if the process dies too.
        self.held: list[RunRecord] = []

    def files(self) -> list[Path]:
        rescued = self.rescue_folder.glob("*.json") if self.rescue_folder.is_dir() else []
        return sorted([*self.folder.glob("*.json"), *rescued], key=lambda p: p.name)  # names start with the time

    def rescue(self) -> int:
        """At the stop: runs still held in memory (the spool's disk is full) to the rescue folder, or,
        failing that, into the log in full (JSON), so that no run ends with the process unsaid; how
        many were kept nowhere but the log."""
        with self._lock:
            unsaved = []
            for record in self.held:
                try:
                    self.rescue_folder.mkdir(parents=True, exist_ok=True)
                    path = self._write(self.rescue_folder, record)
                    log.warning("run of %s (batch %d) kept in %s until the next start", record.model,
                                record.batch_size, path)
                except OSError as exc:
                    unsaved.append(record)
                    log.error("run of %s (batch %d) could be kept nowhere (%s); here it is, in full: %s",
                              record.model, record.batch_size, exc, json.dumps(record.to_storable()))
            self.held = []
            return len(unsaved)

    def add(self, record: RunRecord) -> Path:
        """Write `record` to the spool; it gets an idempotency key first if it has none, so a flush
        that dies between its commit and its unlink does not store it twice on the next start."""
        return self._write(self.folder, keyed(record))

    @staticmethod
    def _write(folder: Path, record: RunRecord) -> Path:
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
        tmp = folder / f".{name}.tmp"
        try:
            tmp.write_text(json.dumps(record.to_storable(), allow_nan=False), encoding="utf-8")
            os.replace(tmp, folder / name)
        except OSError:
            tmp.unlink(missing_ok=True)  # a full disk leaves no empty temporary file behind
            raise
        return folder / name

    def clean(self) -> int:
        """Remove temporary files a crash or a full disk left (never a complete run); how many."""
        left = list(self.folder.glob(".*.json.tmp"))
        for path in left:
            path.unlink(missing_ok=True)
        return len(left)

    def flush(self, db: Database) -> list[RunRecord]:
        """Store waiting runs oldest first; stop at the first that fails. The runs stored now."""
        with self._lock:
            return self._flush(db) + self._release_held(db)

    def _release_held(self, db: Database) -> list[RunRecord]:
        """Runs held in memory: into the database if it answers, else into the spool if the disk
        has room again; the ones stored now."""
        stored, still = [], []
        for record in self.held:
            try:
                if not self.files():
                    stored.append(replace(record, run_id=queries.save_run(db, record)))
                    continue
            except UNAVAILABLE:
                pass
            try:
                self.add(record)
            except OSError:
                still.append(record)
        if len(still) < len(self.held):
            log.warning("%d run(s) held in memory are safe again; %d still held", len(self.held) - len(still),
                        len(still))
        self.held = still
        return stored

    def _spool_or_hold(self, record: RunRecord) -> None:
        record = keyed(record)  # the same key whether it is spooled or held
        try:
            self.add(record)
        except OSError as exc:
            self.held.append(record)
            log.error("run of %s (batch %d) can be neither stored nor spooled (%s): held in memory, %d held",
                      record.model, record.batch_size, exc, len(self.held))

    def _flush(self, db: Database) -> list[RunRecord]:
        stored = []
        for path in self.files():
            record = RunRecord.from_storable(json.loads(path.read_text(encoding="utf-8")))
            try:
                record = replace(record, run_id=queries.save_run(db, record))
            except UNAVAILABLE as exc:
                log.warning("database still unavailable, %d run(s) wait in %s: %s",
                            len(self.files()), self.folder, str(exc).splitlines()[0])
                break
            path.unlink()
            stored.append(record)
            log.info("run %s stored from the spool: model=%s batch=%d status=%s", record.run_id,
                     record.model, record.batch_size, record.status)
        return stored

    def store(self, db: Database, record: RunRecord) -> RunRecord:
        """Store `record` now (after any that wait), or spool it, or hold it in memory when even the
        spool cannot be written; the record as it is now: its `run_id` says whether it is stored."""
        with self._lock:
            if self.held:
                self._release_held(db)
            if self.files():
                self._flush(db)
            if not self.files():  # nothing waits: store now, unless the database is still away
                try:
                    return replace(record, run_id=queries.save_run(db, record))
                except UNAVAILABLE as exc:
                    log.warning("database unavailable, run of %s spooled: %s", record.model,
                                str(exc).splitlines()[0])
            self._spool_or_hold(record)  # behind any that wait, keeping the order of runs
        return record


def keyed(record: RunRecord) -> RunRecord:
    """The record with an idempotency key: its own, or a new one."""
    return record if record.idempotency_key is not None else replace(record, idempotency_key=f"run:{uuid.uuid4().hex}")
