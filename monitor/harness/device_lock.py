"""One benchmark per device on a host, whoever starts it: a kernel file lock per device.

Two benchmarks on one device measure each other (a daemon's run went from 5.5 ms to 68 ms p50 while
a `perfguard run` typed beside it overlapped it). The daemon's per-device queue keeps its own runs
apart, but not a command typed in a shell, an `optimize`, or a fleet worker on the same host. So every
worker a runner starts (benchmark, freeze, A/B, candidates, profile, prepare) first takes the lock of
its device; whoever comes second waits, says so once, and runs when the first is done.

`flock` is held by the open file and released by the kernel however its holder ends, so a crashed
process never leaves the device locked. The files live in $PERFGUARD_LOCK_DIR, else /run/lock/perfguard
(shared by every user of the host, and visible through a systemd unit's PrivateTmp), else the temp
folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

POLL_S = 0.2
SYSTEM_DIR = Path("/run/lock/perfguard")


class LockWaitCancelled(RuntimeError):
    """The wait for a device lock was cancelled (the daemon is stopping)."""


def lock_dir() -> Path:
    """Where the device locks live on this host (created if missing)."""
    explicit = os.environ.get("PERFGUARD_LOCK_DIR")
    candidates = [Path(explicit)] if explicit else [SYSTEM_DIR, Path(tempfile.gettempdir()) / "perfguard-locks"]
    for folder in candidates:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            os.chmod(folder, 0o1777)  # every user of the host shares the locks (sticky, like /tmp)
        except PermissionError:
            pass  # someone else's folder: usable if it lets us create and open files
        except OSError:
            continue
        if os.access(folder, os.W_OK | os.X_OK):
            return folder
    raise OSError(f"no writable folder for device locks (tried {', '.join(map(str, candidates))}); "
                  "set PERFGUARD_LOCK_DIR")


def lock_path(device: str) -> Path:
    """The lock file of a device; "cuda" and "cuda:0" are the same GPU."""
    name = "cuda:0" if device == "cuda" else device
    return lock_dir() / f"device-{re.sub(r'[^A-Za-z0-9]+', '_', name)}.lock"


@contextlib.contextmanager
def device_lock(device: str, what: str, cancel: threading.Event | None = None) -> Iterator[float]:
    """Hold the device's lock for the block; yields how long it waited (seconds).

    Waits as long as the holder benchmarks, logging who holds it once; raises LockWaitCancelled
    when `cancel` is set meanwhile.
    """
    path = lock_path(device)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    with contextlib.suppress(PermissionError):
        os.fchmod(fd, 0o666)  # another user's process must be able to open it too
    handle = os.fdopen(fd, "r+", encoding="utf-8")
    try:
        started = time.monotonic()
        announced = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not announced:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    log.warning("waiting for the %s benchmark lock, held by %s (%s): two benchmarks on one "
                                "device would measure each other", device, holder, path)
                    announced = True
                if cancel is not None and cancel.is_set():
                    raise LockWaitCancelled(f"cancelled while waiting for the {device} benchmark lock") from None
                time.sleep(POLL_S)
        waited = time.monotonic() - started
        if announced:
            log.warning("got the %s benchmark lock after %.1f s", device, waited)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} ({_command()}): {what}\n")
        handle.flush()
        yield waited
    finally:
        handle.close()  # closing releases the lock


def _command() -> str:
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    return " ".join([program, *sys.argv[1:2]])
