"""Operator profiles that hold on a busy host: one thread, sessions in turns, each row at its least disturbed."""

from __future__ import annotations

import torch

from monitor.harness import profiling


def row(op: str, us: float, shapes: str = "[8,16]") -> dict:
    return {"op": op, "shapes": shapes, "calls": 1.0, "self_us": us, "self_device_us": 0.0}


def test_each_row_keeps_its_least_disturbed_session() -> None:
    # A stall landed on aten::copy_ in the first session and on aten::addmm in the second.
    stalled = [row("aten::copy_", 14_000.0), row("aten::addmm", 900.0)]
    other = [row("aten::addmm", 5_000.0), row("aten::copy_", 3.0), row("aten::relu", 2.0)]
    best = profiling._least_disturbed([stalled, other])
    assert [(r["op"], r["self_us"]) for r in best] == [("aten::addmm", 900.0), ("aten::copy_", 3.0), ("aten::relu", 2.0)]


def test_subjects_are_profiled_in_turns_with_their_own_shapes() -> None:
    small, large = torch.nn.Linear(16, 4), torch.nn.Linear(16, 64)
    x = torch.randn(8, 16)
    order: list[str] = []

    def traced(label: str, model: torch.nn.Module):
        def call() -> torch.Tensor:
            order.append(label)
            return model(x)
        return call

    def threads_seen(label: str, model: torch.nn.Module):
        inner = traced(label, model)

        def call() -> torch.Tensor:
            seen.add(torch.get_num_threads())
            return inner()
        return call

    seen: set[int] = set()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.inference_mode():
            profiles = profiling.profile_subjects({"a": threads_seen("a", small), "b": threads_seen("b", large)}, "cpu")
        assert seen == {1} and torch.get_num_threads() == 2  # profiled on one thread, the setting restored
    finally:
        torch.set_num_threads(before)
    sessions = [order[i] for i in range(2 * profiling.WARMUP_CALLS, len(order), profiling.PROFILED_CALLS)]
    assert sessions == ["a", "b", "b", "a", "a", "b"][: 2 * profiling.SESSIONS]  # ABBA, after both warm up
    shapes = {label: {r["shapes"] for r in rows if r["op"] == "aten::addmm"} for label, rows in profiles.items()}
    assert shapes == {"a": {"[4] [8,16] [16,4]"}, "b": {"[64] [8,16] [16,64]"}}
