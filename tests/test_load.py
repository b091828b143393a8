"""Concurrent load on one model: every caller calls, only calls inside the window count, percentiles are
a run's, a failing call stops the level with its error. No timing is asserted (the host drifts)."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from monitor.harness.load import drive, drive_processes
from tests.load_callers import dying_caller, failing_caller, python_bound_caller
from tests.window_helpers import RecordingWindow
from tests.workloads import Tiny


def test_every_caller_calls_and_the_level_reads_like_a_run() -> None:
    model = Tiny().eval()
    x = torch.randn(8, 16)
    level = drive(lambda: model(x), concurrency=3, batch_size=8, duration_s=0.3, warmup_s=0.05,
                  context=torch.inference_mode)
    assert level.concurrency == 3 and len(level.calls_per_caller) == 3 and all(level.calls_per_caller)
    m = level.metrics
    assert m.samples == level.calls
    assert m.latency_ms_p50 is not None and 0 < m.latency_ms_min <= m.latency_ms_p50 <= m.latency_ms_p99
    assert m.throughput_per_s == pytest.approx(level.calls * 8 / 0.3)


def test_the_context_is_entered_by_each_caller_thread() -> None:
    seen: set[int] = set()
    inside = threading.local()

    class Marked:
        def __enter__(self) -> None:
            inside.on = True
            seen.add(threading.get_ident())

        def __exit__(self, *exc: object) -> None:
            inside.on = False

    def call() -> None:
        assert getattr(inside, "on", False), "called outside the caller's context"

    drive(call, concurrency=2, batch_size=1, duration_s=0.05, warmup_s=0.0, context=Marked)
    assert len(seen) == 2 and threading.get_ident() not in seen


def test_calls_of_the_warm_up_are_not_counted() -> None:
    starts: list[float] = []
    level = drive(lambda: starts.append(0.0), concurrency=1, batch_size=1, duration_s=0.05, warmup_s=0.1)
    assert 0 < level.calls < len(starts)


@pytest.mark.parametrize("callers", ["threads", "processes"])
def test_the_meter_runs_over_the_counted_window_only(callers: str) -> None:
    meter, begun = RecordingWindow(), time.perf_counter()
    if callers == "threads":
        level = drive(lambda: time.sleep(0.001), concurrency=2, batch_size=1, duration_s=0.3, warmup_s=0.2,
                      meter=meter)
    else:
        level = drive_processes(python_bound_caller, concurrency=2, batch_size=1, duration_s=0.3, warmup_s=0.2,
                                meter=meter)
    if callers == "threads":  # caller processes start later than `begun`, by however long spawning takes
        assert meter.started - begun >= 0.2 - 0.01  # not through the warm-up
    assert 0.3 - 0.01 <= meter.stopped - meter.started < 0.3 + 1.0  # the window; its end may be slept past
    assert level.measured == {"energy_j": 10.0, "window_s": meter.stopped - meter.started} and level.calls > 0


def test_a_failing_call_stops_every_caller_and_is_raised() -> None:
    calls = []

    def call() -> None:
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("the model broke")

    with pytest.raises(RuntimeError, match="the model broke"):
        drive(call, concurrency=2, batch_size=1, duration_s=30.0, warmup_s=0.0)


@pytest.mark.parametrize("args", [(0, 1.0, 0.1), (2, 0.0, 0.1), (2, 1.0, -1.0)])
def test_bad_levels_are_refused(args: tuple[int, float, float]) -> None:
    concurrency, duration, warmup = args
    with pytest.raises(ValueError, match="concurrency"):
        drive(lambda: None, concurrency=concurrency, batch_size=1, duration_s=duration, warmup_s=warmup)


def test_caller_processes_each_build_their_own_call_and_share_one_window() -> None:
    level = drive_processes(python_bound_caller, concurrency=2, batch_size=1, duration_s=0.3, warmup_s=0.05)
    assert level.concurrency == 2 and len(level.calls_per_caller) == 2 and all(level.calls_per_caller)
    assert level.metrics.samples == level.calls == len(level.samples_ns)
    assert level.metrics.throughput_per_s == pytest.approx(level.calls / 0.3)
    assert len(level.caller_peak_rss_mb) == 2 and all(rss > 5 for rss in level.caller_peak_rss_mb)
    assert level.details()["caller_peak_rss_mb"] == list(level.caller_peak_rss_mb)


def test_a_caller_process_that_dies_ends_the_level_and_its_meter_at_once() -> None:
    meter, begun = RecordingWindow(), time.perf_counter()
    with pytest.raises(RuntimeError, match="a caller process died"):
        drive_processes(dying_caller, concurrency=1, batch_size=1, duration_s=60.0, warmup_s=0.0, meter=meter)
    assert time.perf_counter() - begun < 30 and meter.stopped - meter.started < 30  # not the 60 s window


def test_a_caller_process_that_fails_stops_the_level_with_its_traceback() -> None:
    with pytest.raises(RuntimeError, match="(?s)a caller process failed.*this caller cannot build its model"):
        drive_processes(failing_caller, concurrency=2, batch_size=1, duration_s=0.3)
