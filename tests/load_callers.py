"""Set-ups of load caller processes (harness/load.py `drive_processes`), in a module without torch so
that each spawned caller starts in a fraction of a second."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any


def python_bound_caller() -> tuple[Callable[[], int], Callable[[], Any]]:
    """A call that spends its time in Python code, holding the GIL: threads share it, processes do not."""

    def call() -> int:
        return sum(i * i for i in range(20_000))

    return call, contextlib.nullcontext


def failing_caller() -> tuple[Callable[[], int], Callable[[], Any]]:
    raise RuntimeError("this caller cannot build its model")


def dying_caller() -> tuple[Callable[[], int], Callable[[], Any]]:
    """A caller whose process dies in its tenth call, without a word (a segfault, the OOM killer)."""
    calls = []

    def call() -> int:
        calls.append(1)
        if len(calls) == 10:
            os._exit(3)
        return len(calls)

    return call, contextlib.nullcontext
