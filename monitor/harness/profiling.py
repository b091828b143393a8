"""Operator profiles in the worker: where one call of a model spends its time, op by op.

`torch.profiler` records every ATen operator of a few calls; rows are grouped by operator and input
shapes, so a diff against the frozen reference can say not only that `aten::addmm` got slower but
which shapes are new (the grown layer). Self time is used: it adds up to the call's time without
counting a parent op (aten::linear) and its child (aten::addmm) twice. Runs inside the worker only.

Profiles name where the work is, so they are taken on one intra-op thread: on a busy host a
neighbour that takes a core stalls every parallel region waiting for the thread it preempted, and
whichever op runs then absorbs the stall (a 2 us copy reads as milliseconds, in every session). The
subjects are also profiled in alternating sessions, each row at its least disturbed session's time:
interference only ever adds time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

PROFILED_CALLS = 10  # per session
# A runtime's own profiler: the kernels n calls ran, (operator, input shapes, µs) each
OwnProfiler = Callable[[int], list[tuple[str, list[list[int]], float]]]
SESSIONS = 3
WARMUP_CALLS = 5
MAX_ROWS = 200


def profile_subjects(
    calls: dict[str, Callable[[], Any]], device: str, own: dict[str, OwnProfiler] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Each subject's profile (see `profile_ops`) on one intra-op thread, from SESSIONS sessions, the
    subjects taking turns (ABBA), each (operator, shapes) row at its smallest self time over them.
    A subject in `own` runs on a runtime with a profiler of its own (ONNX Runtime: torch's profiler
    sees nothing inside it), whose kernels make its rows instead (`kernel_rows`)."""
    own = own or {}
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for call in calls.values():
            for _ in range(WARMUP_CALLS):
                call()
        sessions: dict[str, list[list[dict[str, Any]]]] = {label: [] for label in calls}
        for session in range(SESSIONS):
            order = list(calls) if session % 2 == 0 else list(reversed(calls))
            for label in order:
                profiler = own.get(label)
                sessions[label].append(kernel_rows(profiler(PROFILED_CALLS), PROFILED_CALLS) if profiler
                                       else profile_ops(calls[label], device))
    finally:
        torch.set_num_threads(threads)
    return {label: _least_disturbed(profiles) for label, profiles in sessions.items()}


def _least_disturbed(profiles: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for rows in profiles:
        for row in rows:
            key = (row["op"], row["shapes"])
            if key not in best or _busy(row) < _busy(best[key]):
                best[key] = row
    return sorted(best.values(), key=_busy, reverse=True)[:MAX_ROWS]


def _busy(row: dict[str, Any]) -> float:
    return float(row["self_us"] + row["self_device_us"])


def profile_ops(call: Callable[[], Any], device: str) -> list[dict[str, Any]]:
    """Per (operator, input shapes): calls and self time per model call, in µs, busiest first."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities, record_shapes=True) as prof:
        for _ in range(PROFILED_CALLS):
            call()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    rows = []
    for event in prof.key_averages(group_by_input_shape=True):
        device_us = getattr(event, "self_device_time_total", 0.0) or 0.0
        rows.append({
            "op": event.key,
            "shapes": _shapes(event.input_shapes),
            "calls": event.count / PROFILED_CALLS,
            "self_us": event.self_cpu_time_total / PROFILED_CALLS,
            "self_device_us": device_us / PROFILED_CALLS,
        })
    rows.sort(key=_busy, reverse=True)
    return rows[:MAX_ROWS]


def kernel_rows(kernels: list[tuple[str, list[list[int]], float]], calls: int) -> list[dict[str, Any]]:
    """A runtime profiler's kernels of `calls` model calls as `profile_ops`'s rows: per (operator,
    input shapes), calls and self time per model call, busiest first."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for op, shapes, us in kernels:
        text = _shapes(shapes)
        row = rows.setdefault((op, text), {"op": op, "shapes": text, "calls": 0, "self_us": 0.0, "self_device_us": 0.0})
        row["calls"] += 1
        row["self_us"] += us
    for row in rows.values():
        row["calls"], row["self_us"] = row["calls"] / calls, row["self_us"] / calls
    return sorted(rows.values(), key=_busy, reverse=True)[:MAX_ROWS]


def _shapes(shapes: Any) -> str:
    """Input shapes as a short stable text, e.g. '[32,1024] [1024,1536]' (scalars and None dropped)."""
    parts = []
    for shape in shapes or []:
        if isinstance(shape, (list, tuple)) and shape and all(isinstance(d, int) for d in shape):
            parts.append("[" + ",".join(str(d) for d in shape) + "]")
    return " ".join(parts)
