"""One daemon per database: the lock is named after the database, not the spelling of its URL, and
lives where a systemd unit and a shell both look."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from monitor.service.lock import DaemonAlreadyRunning, DaemonLock, database_identity, lock_path


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
