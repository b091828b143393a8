"""Processes the tests watch: whether one lives, waiting for some to go, a pid a workload writes."""

from __future__ import annotations

import time
from pathlib import Path

import psutil


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids: list[int], seconds: float = 10) -> list[int]:
    """Wait up to `seconds` for every pid to end; those still alive then."""
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def pid_written(path: Path, seconds: float = 60) -> int:
    """The pid a workload writes to `path` (PERFGUARD_TEST_CHILD_PID_FILE), once it has."""
    deadline = time.monotonic() + seconds
    while not (path.exists() and path.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return int(path.read_text())
