"""Turns between parallel test processes: the timing tests run alone, the others side by side."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def suite_turn(folder: Path, alone: bool) -> Iterator[None]:
    """A readers-writer lock across parallel test processes: a `timing` test holds it alone, the
    others share it. A timing test that waits holds the turnstile, so that the others' next tests
    queue behind it instead of keeping it waiting for ever."""
    with open(folder / "suite.turnstile", "a") as turnstile, open(folder / "suite.lock", "a") as lock:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        if not alone:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
