"""What only SQLite storage does: the file (and its directories) is created, in WAL mode, where the URL says.

Everything else storage guarantees is tested on SQLite and PostgreSQL alike in test_storage.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.db import Database


def test_file_and_missing_directories_are_created_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "does" / "not" / "exist" / "perfguard.db"
    with Database.open(f"sqlite:///{path}") as db:
        assert path.is_file()
        assert db.display_location() == str(path)
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000


def test_relative_sqlite_path_is_taken_from_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with Database.open("sqlite:///data/perfguard.db") as db:
        assert db.display_location() == str(tmp_path / "data" / "perfguard.db")
    assert (tmp_path / "data" / "perfguard.db").is_file()
