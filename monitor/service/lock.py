"""One daemon per database on a host: a kernel file lock that dies with its holder.

Two daemons on one host would benchmark at the same time and measure each other. `flock` is held by
the open file and released by the kernel when the process exits, however it exits, so a crashed
daemon never leaves a stale lock behind (a pid file would).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from pathlib import Path
from typing import IO


class DaemonAlreadyRunning(RuntimeError):
    pass


def lock_path(storage_url: str) -> Path:
    """The lock file for a database: the same URL on this host means the same file."""
    folder = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    digest = hashlib.sha256(storage_url.encode()).hexdigest()[:16]
    return folder / f"perfguard-daemon-{digest}.lock"


class DaemonLock:
    """Held for the daemon's lifetime: `with DaemonLock(url, where):` or raises DaemonAlreadyRunning."""

    def __init__(self, storage_url: str, display: str):
        self.path = lock_path(storage_url)
        self._display = display
        self._file: IO[str] | None = None

    def __enter__(self) -> DaemonLock:
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until __exit__
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
