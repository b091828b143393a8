"""One daemon per database: the lock is named after the database, not the spelling of its URL, and
lives where a systemd unit and a shell both look."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import text

from monitor.service.lock import (
    DaemonAlreadyRunning,
    DaemonLock,
    database_identity,
    lock_path,
)
from storage.db import Database
from storage.lease import DatabaseLease


def test_one_sqlite_file_is_one_lock_however_its_path_is_written(tmp_path: Path, monkeypatch):
    (tmp_path / "state").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "state")
    spellings = [f"sqlite:///{tmp_path}/state/runs.db", f"sqlite:///{tmp_path}/other/../state/runs.db",
                 f"sqlite:///{tmp_path}/link/runs.db"]
    monkeypatch.chdir(tmp_path)
    spellings.append("sqlite:///state/runs.db")
    assert len({lock_path(url) for url in spellings}) == 1
    assert lock_path(f"sqlite:///{tmp_path}/state/other.db") != lock_path(spellings[0])


def test_one_postgresql_database_is_one_lock_whoever_connects():
    same = ["postgresql+psycopg://postgres@localhost/test", "postgresql+psycopg://postgres@127.0.0.1:5432/test",
            "postgresql+psycopg://alice:secret@127.0.0.1/test"]
    assert len({database_identity(url) for url in same}) == 1
    assert database_identity("postgresql+psycopg://postgres@127.0.0.1/other") != database_identity(same[0])
    assert "secret" not in database_identity(same[2])


def test_a_second_holder_is_refused_whatever_the_runtime_folder(tmp_path: Path, monkeypatch):
    url = f"sqlite:///{tmp_path}/runs.db"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "unit"))
    with DaemonLock(url, "runs.db"):
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "shell"))
        with pytest.raises(DaemonAlreadyRunning, match=f"pid {os.getpid()}"):
            with DaemonLock(f"sqlite:///{tmp_path}/./runs.db", "runs.db"):
                pass


@pytest.mark.postgres
def test_a_postgresql_lease_has_one_holder_and_dies_with_its_connection(pg_schema_url, pg_url):
    with Database.open(pg_schema_url) as db, Database.open(pg_url, upgrade=False) as other_schema:
        first, second = DatabaseLease(db, "daemon on host-a"), DatabaseLease(db, "daemon on host-b")
        assert first.acquire() is None and first.alive()
        held = second.acquire()
        assert held is not None and "daemon on host-a" in held
        neighbour = DatabaseLease(other_schema, "a deployment in another schema")
        assert neighbour.acquire() is None  # a lease per schema: deployments may share a database
        neighbour.release()
        # The server ends the holder's connection (a restart, a cut): nothing stale is left behind.
        with db.engine.connect() as admin:
            admin.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               "WHERE application_name = 'daemon on host-a'"))
        assert not first.alive()
        assert second.acquire() is None
        held = first.acquire()
        assert held is not None and "daemon on host-b" in held
        second.release()
        assert first.acquire() is None
        first.release()


def test_a_sqlite_database_needs_no_lease(tmp_path: Path):
    with Database.open(f"sqlite:///{tmp_path}/runs.db") as db:
        lease = DatabaseLease(db)
        assert lease.acquire() is None and lease.alive() and lease.held
