"""One daemon per database on a host: a kernel file lock that dies with its holder.

Two daemons on one host would benchmark at the same time and measure each other. `flock` is held by
the open file and released by the kernel when the process exits, however it exits, so a crashed
daemon never leaves a stale lock behind (a pid file would).

The lock is named after the database itself, not the spelling of its URL: a SQLite file by its real
path (`..`, symlinks and relative paths resolve to one name), a PostgreSQL database by the address its
host name resolves to, its port and its name (`localhost` and `127.0.0.1` are one server; the user and
password do not matter). It lives in the host's lock folder (device_lock.lock_dir), which a systemd
unit and a shell share, not in a per-session runtime folder.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
from pathlib import Path
from typing import IO

from sqlalchemy.engine import make_url

from monitor.harness.device_lock import lock_dir

DEFAULT_PORTS = {"postgresql": 5432}


class DaemonAlreadyRunning(RuntimeError):
    pass


def database_identity(storage_url: str) -> str:
    """One name per database, however its URL is spelled."""
    url = make_url(storage_url)
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            return f"sqlite:{database}"
        return "sqlite:" + os.path.realpath(os.path.expanduser(database))
    host = url.host or "localhost"
    try:  # one address per server: localhost and 127.0.0.1 are the same one
        host = sorted(str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP))[0]
    except (OSError, IndexError):
        pass
    backend = url.get_backend_name()
    return f"{backend}://{host}:{url.port or DEFAULT_PORTS.get(backend, 0)}/{url.database}"


def lock_path(storage_url: str) -> Path:
    """The lock file for a database: the same database on this host means the same file."""
    digest = hashlib.sha256(database_identity(storage_url).encode()).hexdigest()[:16]
    return lock_dir() / f"daemon-{digest}.lock"


class DaemonLock:
    """Held for the daemon's lifetime: `with DaemonLock(url, where):` or raises DaemonAlreadyRunning."""

    def __init__(self, storage_url: str, display: str):
        self.path = lock_path(storage_url)
        self._display = display
        self._file: IO[str] | None = None

    def __enter__(self) -> DaemonLock:
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown pid"
            handle.close()
            raise DaemonAlreadyRunning(
                f"another perfguard daemon ({holder}) is already running on {self._display} "
                f"(lock {self.path})"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._file = handle
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._file is not None:
            self._file.close()  # closing releases the lock
            self._file = None


def daemon_holder(storage_url: str) -> str | None:
    """Who holds the daemon lock for this database on this host ("pid N"), or None if nobody does."""
    path = lock_path(storage_url)
    if not path.exists():
        return None
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            return handle.read().strip() or "unknown pid"
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None
