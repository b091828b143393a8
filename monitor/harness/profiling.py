"""Operator profiles in the worker: where one call of a model spends its time, op by op.

`torch.profiler` records every ATen operator of a few calls; rows are grouped by operator and input
shapes, so a diff against the frozen reference can say not only that `aten::addmm` got slower but
which shapes are new (the grown layer). Self time is used: it adds up to the call's time without
counting a parent op (aten::linear) and its child (aten::addmm) twice. Runs inside the worker only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

PROFILED_CALLS = 20
WARMUP_CALLS = 5
MAX_ROWS = 200


def profile_ops(call: Callable[[], Any], device: str) -> list[dict[str, Any]]:
    """Per (operator, input shapes): calls and self time per model call, in µs, busiest first."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    for _ in range(WARMUP_CALLS):
        call()
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
    rows.sort(key=lambda r: r["self_us"] + r["self_device_us"], reverse=True)
    return rows[:MAX_ROWS]


def _shapes(shapes: Any) -> str:
    """Input shapes as a short stable text, e.g. '[32,1024] [1024,1536]' (scalars and None dropped)."""
    parts = []
    for shape in shapes or []:
        if isinstance(shape, (list, tuple)) and shape and all(isinstance(d, int) for d in shape):
            parts.append("[" + ",".join(str(d) for d in shape) + "]")
    return " ".join(parts)
