"""Concurrent load on one loaded model: N callers at once, each call timed, for a fixed time.

One request at a time says little about a model served to many: under load its calls share the
cores (and torch's intra-op pools, one per calling thread, oversubscribe them), and p99 grows
before throughput stops growing. `drive` starts N threads together, lets each call the model in a
loop for a warm-up that is not counted, then for `duration_s`, and returns the throughput and the
latency percentiles of the calls that started inside that window. Threads suit models whose calls
spend their time in torch's kernels, which release the GIL; a model whose time goes to Python code
is bound by the GIL, and the flat throughput across levels shows it. `drive_processes` runs the
callers as processes instead, each with its own copy of the model and its own GIL, as a server with
several worker processes would: where the GIL decides, the two answers differ. Runs inside the worker.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from monitor.core.runs import RunMetrics
from monitor.harness import process_memory, sampling
from monitor.harness.sampling import MeasuredWindow

MAX_STORED_SAMPLES = 10_000


@dataclass(frozen=True, slots=True)
class LoadLevel:
    """What one concurrency level gave: the calls timed inside the window (their percentiles, as a
    run's), how many each caller made, and the throughput they reached together."""

    concurrency: int
    seconds: float  # the measured window
    calls_per_caller: tuple[int, ...]
    metrics: RunMetrics  # latency percentiles of every call; throughput_per_s: samples/s all callers made
    samples_ns: tuple[int, ...] = ()  # every call's latency, in the order the callers' lists end to end
    caller_peak_rss_mb: tuple[float, ...] = ()  # caller processes' own peak resident memory (processes only)
    measured: dict[str, Any] | None = None  # what the meter (NVML on a GPU) reported over the window

    @property
    def calls(self) -> int:
        return sum(self.calls_per_caller)

    def stored_samples_ms(self, most: int = MAX_STORED_SAMPLES) -> list[float]:
        """The calls' latencies to store with the run, every k-th when there are more than `most`
        (a fast model under load makes tens of thousands; every k-th keeps their distribution)."""
        step = max(1, -(-len(self.samples_ns) // most))
        return [t / 1e6 for t in self.samples_ns[::step]]

    def details(self) -> dict[str, Any]:
        """How the level went, for the run's details: callers, window, each caller's calls."""
        details: dict[str, Any] = {"concurrency": self.concurrency, "window_s": self.seconds, "calls": self.calls,
                                   "calls_per_caller": list(self.calls_per_caller)}
        if self.caller_peak_rss_mb:
            details["caller_peak_rss_mb"] = list(self.caller_peak_rss_mb)
        return details


def drive(
    call: Callable[[], Any],
    concurrency: int,
    batch_size: int,
    duration_s: float,
    warmup_s: float = 0.2,
    context: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
    meter: MeasuredWindow | None = None,
) -> LoadLevel:
    """Run `call` from `concurrency` threads at once for `warmup_s` (not counted), then `duration_s`.

    `context` is entered by each caller thread around its loop (torch.inference_mode, which is
    per thread). `meter` (NVML's utilisation, power and energy on a GPU) runs over the counted
    window only. An exception in any caller stops them all and is raised here.
    """
    _check_level(concurrency, duration_s, warmup_s)
    clock = time.perf_counter_ns
    start_gate = threading.Barrier(concurrency + 1)
    window: list[int] = []  # [start, stop] in perf_counter_ns, set once every caller is ready
    stop = threading.Event()
    timings: list[list[int]] = [[] for _ in range(concurrency)]
    failures: list[BaseException] = []

    def caller(index: int) -> None:
        mine = timings[index]
        try:
            with context():
                start_gate.wait()
                begin, end = window
                while not stop.is_set():
                    t0 = clock()
                    if t0 >= end:
                        break
                    call()
                    if t0 >= begin:
                        mine.append(clock() - t0)
        except BaseException as exc:  # noqa: BLE001 - handed to the driver, which raises it
            failures.append(exc)
            stop.set()

    threads = [threading.Thread(target=caller, args=(i,), name=f"perfguard-load-{i}", daemon=True)
               for i in range(concurrency)]
    for thread in threads:
        thread.start()
    now = clock()
    window.extend([now + int(warmup_s * 1e9), now + int((warmup_s + duration_s) * 1e9)])
    start_gate.wait()
    measured = _metered(meter, window[0], window[1], stop.is_set)
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return _level(timings, batch_size, duration_s, measured=measured)


# A caller process's set-up: runs in the new process, returns the call to time and the context
# (torch.inference_mode) to run its loop in. Must pickle: a module-level function, or a partial of one.
CallerSetup = Callable[[], tuple[Callable[[], Any], Callable[[], AbstractContextManager[Any]]]]
START_TIMEOUT_S = 600.0  # for every caller process to import torch and build its model


def drive_processes(
    setup: CallerSetup, concurrency: int, batch_size: int, duration_s: float, warmup_s: float = 0.2,
    meter: MeasuredWindow | None = None,
) -> LoadLevel:
    """`drive`, with each caller a spawned process that builds its own model with `setup`. The window
    opens once every process is ready (the monotonic clock is the same in all of them); each sends
    its timings back. A caller that fails stops the level with its traceback."""
    _check_level(concurrency, duration_s, warmup_s)
    spawn = multiprocessing.get_context("spawn")  # never fork a process whose OpenMP pool is running
    ready, go = spawn.Barrier(concurrency + 1), spawn.Barrier(concurrency + 1)
    window = spawn.Array("q", 2)
    pipes = [spawn.Pipe(duplex=False) for _ in range(concurrency)]
    procs = [spawn.Process(target=_process_caller, args=(setup, ready, go, window, sender), daemon=True,
                           name=f"perfguard-load-{i}") for i, (_, sender) in enumerate(pipes)]
    for proc in procs:
        proc.start()
    for _, sender in pipes:
        sender.close()  # the callers hold the only ends: a caller that dies is an end of file here
    receivers = [receiver for receiver, _ in pipes]
    try:
        ready.wait(START_TIMEOUT_S)
        now = time.perf_counter_ns()
        window[0], window[1] = now + int(warmup_s * 1e9), now + int((warmup_s + duration_s) * 1e9)
        go.wait(START_TIMEOUT_S)
        measured = _metered(meter, window[0], window[1], lambda: any(r.poll() for r in receivers))
        answers = [_answer(receiver) for receiver in receivers]
    except threading.BrokenBarrierError:
        answers = [_answer(receiver) if receiver.poll(5) else ("error", "a caller process died")
                   for receiver in receivers]
        measured = None
    finally:
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
    failed = next((text for kind, text in answers if kind == "error"), None)
    if failed is not None:
        raise RuntimeError(f"a caller process failed:\n{failed}")
    return _level([mine for _, (mine, _rss) in answers], batch_size, duration_s,
                  tuple(rss for _, (_mine, rss) in answers), measured)


def _answer(receiver: Any) -> tuple[str, Any]:
    """A caller's answer, or its death (its pipe closed with nothing sent) as an error."""
    try:
        return receiver.recv()  # type: ignore[no-any-return]
    except EOFError:
        return "error", "a caller process died (its pipe closed before it sent its timings)"


def _check_level(concurrency: int, duration_s: float, warmup_s: float) -> None:
    if concurrency < 1 or duration_s <= 0 or warmup_s < 0:
        raise ValueError(f"concurrency must be >= 1, duration_s > 0 and warmup_s >= 0 (got {concurrency}, "
                         f"{duration_s}, {warmup_s})")


def _metered(
    meter: MeasuredWindow | None, begin_ns: int, end_ns: int, ended: Callable[[], bool]
) -> dict[str, Any] | None:
    """Run `meter` from `begin_ns` to `end_ns` (perf_counter_ns), the counted window, while the
    callers call; None without a meter. `ended` cuts the wait short when a caller has stopped early."""
    if meter is None:
        return None
    _sleep_until(begin_ns, ended)
    meter.start()
    _sleep_until(end_ns, ended)
    return meter.stop()


def _sleep_until(deadline_ns: int, ended: Callable[[], bool]) -> None:
    while not ended() and (left := deadline_ns - time.perf_counter_ns()) > 0:
        time.sleep(min(left / 1e9, 0.05))


def _level(
    timings: list[list[int]], batch_size: int, duration_s: float, caller_rss: tuple[float, ...] = (),
    measured: dict[str, Any] | None = None,
) -> LoadLevel:
    """The level from each caller's timings (ns): every call's percentiles, the callers' joint throughput."""
    every = [t for mine in timings for t in mine]
    metrics = sampling.latency_metrics(every, batch_size)
    metrics.throughput_per_s = len(every) * batch_size / duration_s
    return LoadLevel(len(timings), duration_s, tuple(len(mine) for mine in timings), metrics, tuple(every),
                     caller_rss, measured)


def _process_caller(setup: CallerSetup, ready: Any, go: Any, window: Any, conn: Any) -> None:
    """One caller process: build, wait for the others, call in a loop through the window, send timings."""
    try:
        call, context = setup()
        with context():
            call()  # the first call outside the window, as a thread caller's warm-up would make it
            ready.wait(START_TIMEOUT_S)
            go.wait(START_TIMEOUT_S)
            begin, end = window[0], window[1]
            clock, mine = time.perf_counter_ns, []
            while (t0 := clock()) < end:
                call()
                if t0 >= begin:
                    mine.append(clock() - t0)
        conn.send(("ok", (mine, round(process_memory.peak_rss_mb(), 2))))
    except BaseException:  # noqa: BLE001 - the driver raises it, with this traceback
        ready.abort()
        go.abort()
        conn.send(("error", traceback.format_exc()))
