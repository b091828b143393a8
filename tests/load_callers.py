"""Set-ups of load caller processes (harness/load.py `drive_processes`), in a module without torch so
that each spawned caller starts in a fraction of a second."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any


def python_bound_caller() -> tuple[Callable[[], int], Callable[[], Any]]:
    """A call that spends its time in Python code, holding the GIL: threads share it, processes do not."""

    def call() -> int:
        return sum(i * i for i in range(20_000))

    return call, contextlib.nullcontext


def failing_caller() -> tuple[Callable[[], int], Callable[[], Any]]:
    raise RuntimeError("this caller cannot build its model")
