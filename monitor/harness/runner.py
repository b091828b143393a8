"""The parent side of a benchmark: start the worker, supervise it, turn any ending into a run.

The worker is a fresh interpreter (`python -m monitor.harness.worker`) in its own process group, with
the allocator and thread settings pinned in its environment before it starts (glibc reads them at
start-up), or, when the caller passes a WorkerPool, a process forked from a fork server started with
that same environment (worker_pool.py), which skips importing torch again. The runner enforces the
wall-clock timeout and the memory limit (polling the worker's resident memory), and kills the whole
group on the way out, whatever happens, so no worker outlives it. It never imports torch.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import psutil

from monitor.core.runs import EnvFingerprint, RunRecord, RunStatus
from monitor.harness.device_lock import LockWaitCancelled, device_lock
from monitor.harness.protocol import BenchmarkJob, CompareJob, FreezeJob, SubjectResult, WorkerJob, WorkerResult
from monitor.harness.worker_pool import ForkedWorker, ForkServerError, WorkerPool

log = logging.getLogger(__name__)

# glibc otherwise moves the mmap threshold as a process runs, so large activation buffers land in a
# fast (heap) or slow (fresh mmap + page faults every call) mode that differs between processes.
# Fixing the threshold at its maximum and never trimming keeps every worker in the fast mode.
ALLOCATOR_PINS = {
    "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
    "MALLOC_TRIM_THRESHOLD_": str(2**34),
    "MALLOC_TOP_PAD_": str(64 * 2**20),
}
ERROR_TAIL_LINES = 25
MEMORY_POLL_S = 0.05
IDLE_POLL_S = 0.5
DEFAULT_MEMORY_SHARE = 0.7  # of the host's memory, for a model without memory_limit_mb

ProgressCallback = Callable[[str, int], None]
WorkerProcess = subprocess.Popen[bytes] | ForkedWorker


@dataclass(slots=True)
class WorkerOutcome:
    """How a worker ended: its result when it finished, else status and error text."""

    status: RunStatus
    started_at: datetime
    finished_at: datetime
    error: str | None = None
    result: WorkerResult | None = None
    env: EnvFingerprint | None = None
    phase: str = "start"
    samples_seen: int = 0
    peak_rss_mb: float | None = None
    pid: int | None = None
    worker_exception: str | None = None  # "Type: message", as the worker reported it
    # Why the runner killed the worker: "timeout", "memory" or "cancelled". A result that arrived
    # first still counts after a timeout, but not past the memory limit or a cancel.
    killed_for: str | None = None
    lock_wait_s: float = 0.0  # how long the job waited for its device's lock before it started


def worker_environment(threads: int | None, pin_allocator: bool) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    if pin_allocator:
        env.update(ALLOCATOR_PINS)
    if threads:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = str(threads)
    return env


def default_memory_limit_mb() -> float:
    """The limit of a worker whose model sets none: a share of the host's memory, so that a factory
    that allocates without bound fails its run instead of taking the host (and the daemon) down."""
    return psutil.virtual_memory().total * DEFAULT_MEMORY_SHARE / 2**20


def _tree_rss_mb(proc: psutil.Process, seen: dict[int, float]) -> float:
    """Resident memory of the worker and its descendants; each descendant is noted in `seen` (pid ->
    start time), so that one that leaves the worker's process group (a new session) is still found and
    killed at the end."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
            if p.pid != proc.pid:
                seen.setdefault(p.pid, p.create_time())
        except psutil.Error:
            pass
    return total / 2**20


def _kill_descendants(seen: dict[int, float]) -> None:
    """Kill what the worker started outside its process group and left behind (same pid *and* start
    time: a recycled pid belongs to someone else)."""
    for pid, created in seen.items():
        try:
            leftover = psutil.Process(pid)
            if leftover.create_time() == created:
                leftover.kill()
        except psutil.Error:
            pass


def _tail(stream: IO[bytes], lines: int = ERROR_TAIL_LINES) -> str:
    stream.seek(0)
    text = stream.read().decode("utf-8", errors="replace")
    return "\n".join(text.strip().splitlines()[-lines:])


def _read_events(stdout: IO[bytes], events: queue.Queue[dict[str, Any] | None]) -> None:
    for raw in stdout:
        try:
            events.put(json.loads(raw))
        except ValueError:
            log.warning("worker wrote a non-protocol line: %r", raw[:200])
    events.put(None)


def run_worker(
    job: WorkerJob,
    *,
    timeout_s: float,
    memory_limit_mb: float | None = None,
    pin_allocator: bool = True,
    cwd: Path | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    pool: WorkerPool | None = None,
) -> WorkerOutcome:
    """Run one job in a worker process of its own and wait for it, at most `timeout_s`.

    The worker starts once this process holds its device's lock (device_lock.py): a benchmark started
    beside another one on the same device waits for it instead of measuring it. Setting `cancel` (a
    stopping daemon does) ends the wait or kills the worker at the next poll; the run ends `failed`
    with the reason, so it is stored as aborted rather than lost or half-written. Without a
    `memory_limit_mb`, the worker may use DEFAULT_MEMORY_SHARE of the host's memory. With a `pool`,
    the worker is forked from one of its fork servers (a fresh one is spawned if none can serve).
    """
    try:
        with device_lock(job.device, f"{job.model} ({job.mode}, batch {job.batch_size})", cancel) as waited:
            outcome = _run_locked(job, timeout_s, memory_limit_mb, pin_allocator, cwd, progress, cancel, pool)
    except LockWaitCancelled as exc:
        now = datetime.now(UTC)
        return WorkerOutcome(status="failed", started_at=now, finished_at=now, error=f"aborted: {exc}",
                             phase="waiting for the device", killed_for="cancelled")
    outcome.lock_wait_s = round(waited, 3)
    return outcome


def _run_locked(
    job: WorkerJob,
    timeout_s: float,
    memory_limit_mb: float | None,
    pin_allocator: bool,
    cwd: Path | None,
    progress: ProgressCallback | None,
    cancel: threading.Event | None,
    pool: WorkerPool | None,
) -> WorkerOutcome:
    started_at = datetime.now(UTC)
    outcome = WorkerOutcome(status="failed", started_at=started_at, finished_at=started_at)
    proc, stderr = _start(worker_environment(job.threads, pin_allocator), cwd, pool)
    with stderr:
        outcome.pid = proc.pid
        seen: dict[int, float] = {}
        events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        reader = threading.Thread(target=_read_events, args=(proc.stdout, events), daemon=True)
        reader.start()
        try:
            assert proc.stdin is not None
            proc.stdin.write(job.to_json().encode())
            proc.stdin.close()
            _supervise(proc, events, outcome, timeout_s, memory_limit_mb, progress, cancel, seen)
        except BrokenPipeError:
            pass  # the worker died before reading its job; its exit status tells why
        finally:
            try:
                _tree_rss_mb(psutil.Process(proc.pid), seen)  # the latest children, before the kill
            except psutil.Error:
                pass
            _kill_group(proc)
            _kill_descendants(seen)
            reader.join(timeout=5)
        while not events.empty():
            _apply(events.get_nowait(), outcome, progress)
        outcome.finished_at = datetime.now(UTC)
        if outcome.result is not None and outcome.killed_for in (None, "timeout"):
            outcome.status, outcome.error = "ok", None
        elif outcome.result is not None:
            outcome.result = None
        elif outcome.error is None:
            reason = outcome.worker_exception or _exit_reason(proc.returncode)
            tail = _tail(stderr)
            outcome.error = f"{reason}\n{tail}" if tail else reason
        else:
            tail = _tail(stderr)
            if tail:
                outcome.error += "\n" + tail
    return outcome


def _start(env: dict[str, str], cwd: Path | None, pool: WorkerPool | None) -> tuple[WorkerProcess, IO[bytes]]:
    """Fork the worker from the pool, else spawn a fresh interpreter: (it, the file its stderr goes to)."""
    if pool is not None:
        try:
            return pool.start(env, cwd)
        except ForkServerError as exc:
            log.warning("starting a fresh worker instead: %s", exc)
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 - the worker's handle owns it and closes it
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor.harness.worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    return proc, stderr


def _supervise(
    proc: WorkerProcess,
    events: queue.Queue[dict[str, Any] | None],
    outcome: WorkerOutcome,
    timeout_s: float,
    memory_limit_mb: float | None,
    progress: ProgressCallback | None,
    cancel: threading.Event | None,
    seen: dict[int, float],
) -> None:
    deadline = time.monotonic() + timeout_s
    watched = psutil.Process(proc.pid)
    # Each wake-up of this process takes a core from the worker for a moment: poll memory often only
    # when a limit must be enforced (the worker reports its own peak RSS at the end either way).
    poll_s = MEMORY_POLL_S if memory_limit_mb is not None or cancel is not None else IDLE_POLL_S
    # The host's own protection, checked at the idle pace: a runaway allocation is caught within
    # half a second, and a model that sets no limit is not polled 20 times a second for it.
    memory_limit_mb = memory_limit_mb if memory_limit_mb is not None else default_memory_limit_mb()
    peak = 0.0
    eof = False
    while True:
        try:
            event = events.get(timeout=poll_s)
            if event is None:
                eof = True
            else:
                _apply(event, outcome, progress)
        except queue.Empty:
            pass
        try:
            peak = max(peak, _tree_rss_mb(watched, seen))
        except psutil.Error:
            pass
        outcome.peak_rss_mb = round(peak, 2) if peak else None
        if eof and proc.poll() is not None:
            return
        if eof:
            try:
                proc.wait(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
                return
            except subprocess.TimeoutExpired:
                pass
        if _past_a_limit(outcome, peak, memory_limit_mb, cancel, deadline, timeout_s):
            return


def _past_a_limit(
    outcome: WorkerOutcome, peak: float, memory_limit_mb: float | None, cancel: threading.Event | None,
    deadline: float, timeout_s: float,
) -> bool:
    """Whether the worker must be killed now (over its memory, cancelled, past its time), saying why
    in `outcome`."""
    if memory_limit_mb is not None and peak > memory_limit_mb:
        outcome.status, outcome.killed_for = "failed", "memory"
        outcome.error = (f"memory limit exceeded: worker resident memory reached {peak:.0f} MB, "
                         f"over memory_limit_mb={memory_limit_mb:g} (phase: {outcome.phase})")
        return True
    if cancel is not None and cancel.is_set():
        outcome.status, outcome.killed_for = "failed", "cancelled"
        outcome.error = f"aborted: the benchmark was cancelled (phase: {outcome.phase})"
        return True
    if time.monotonic() >= deadline:
        outcome.status, outcome.killed_for = "timeout", "timeout"
        outcome.error = (f"timed out after {timeout_s:g} s in phase '{outcome.phase}' "
                         f"({outcome.samples_seen} samples taken)")
        return True
    return False


def _apply(event: dict[str, Any] | None, outcome: WorkerOutcome, progress: ProgressCallback | None) -> None:
    if event is None:
        return
    kind = event.get("event")
    if kind == "started":
        outcome.env = EnvFingerprint.from_dict(event["env"])
    elif kind == "progress":
        outcome.phase, outcome.samples_seen = event["phase"], event["samples"]
        if progress is not None:
            progress(outcome.phase, outcome.samples_seen)
    elif kind == "result":
        outcome.result = WorkerResult.from_event(event)
    elif kind == "error":
        outcome.worker_exception = event["error"]


def _kill_group(proc: WorkerProcess) -> None:
    """Kill the worker and anything it started, then reap it (no zombie, no orphan)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    else:
        try:  # the worker is gone; children it left in its group are not
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None and not stream.closed:
            stream.close()


def _exit_reason(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        try:
            return f"worker killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"worker killed by signal {-returncode}"
    if returncode:
        return f"worker exited with status {returncode}"
    return "worker exited without a result"


def to_records(job: WorkerJob, outcome: WorkerOutcome, variant: str) -> list[RunRecord]:
    """One run record per subject; a failed worker gives one failed record for the job.

    A freeze job gives one record, the live model's under `variant`, with the copy it wrote in
    details["frozen"] and the copy's cost relative to it in details["comparison"]: the copy is no
    series of its own, and a "reference" variant would only clutter the model's history.
    """
    env = outcome.result.env if outcome.result else (outcome.env or EnvFingerprint())
    series: dict[str, Any] = (
        {"mode": job.series_mode, "concurrency": job.concurrency} if isinstance(job, BenchmarkJob) else {}
    )
    if outcome.result is None:
        record = RunRecord(
            model=job.model,
            variant=variant,
            device=job.device,
            batch_size=job.batch_size,
            **series,
            status=outcome.status,
            error=outcome.error,
            started_at=outcome.started_at,
            finished_at=outcome.finished_at,
            env=env,
            details={"phase": outcome.phase, "samples_seen": outcome.samples_seen},
        )
        record.metrics.peak_rss_mb = outcome.peak_rss_mb
        return [record]
    records = []
    subjects = outcome.result.subjects[:1] if isinstance(job, FreezeJob) else outcome.result.subjects
    for subject in subjects:
        details = dict(subject.details)
        if outcome.lock_wait_s:
            details["lock_wait_s"] = outcome.lock_wait_s
        if outcome.result.comparison is not None:
            details["comparison"] = outcome.result.comparison
        if outcome.result.frozen is not None:
            details["frozen"] = outcome.result.frozen.to_dict()
        if isinstance(job, BenchmarkJob) and job.reference is not None:
            details["measurement"] = _measurement(job, outcome.result, subject)
        records.append(
            RunRecord(
                model=job.model,
                variant=subject.label if isinstance(job, CompareJob) else variant,
                device=job.device,
                batch_size=job.batch_size,
                **series,
                status="ok",
                started_at=outcome.started_at,
                finished_at=outcome.finished_at,
                metrics=subject.metrics,
                env=env,
                host=outcome.result.host,
                flags=subject.flags,
                details=details,
                samples_ms=subject.samples_ms,
                reference_id=_reference_id(job, subject),
            )
        )
    return records


def _reference_id(job: WorkerJob, subject: SubjectResult) -> int | None:
    """The reference a subject's relative figures were read against, if they were."""
    if isinstance(job, BenchmarkJob) and subject.metrics.rel_to_reference is not None:
        return job.reference_id
    return None


def _measurement(job: BenchmarkJob, result: WorkerResult, subject: SubjectResult) -> dict[str, Any]:
    """How a run with a reference was measured: against it, or absolutely and why."""
    if subject.metrics.rel_to_reference is not None:
        return {"basis": "relative", "reference_id": job.reference_id}
    why = result.reference_error or "no interleaved rounds of the model and its reference"
    return {"basis": "absolute", "reference_id": job.reference_id, "why": f"reference not timed: {why}",
            "reference_lost": result.reference_error is not None}
