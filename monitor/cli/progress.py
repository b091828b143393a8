"""A benchmark's progress on stderr, so that stdout keeps only the table or the JSON."""

from __future__ import annotations

import time

import click

from monitor.cli.tables import cell
from monitor.core.runs import RunRecord
from monitor.registry import PlannedBenchmark
from monitor.service.benchmark import BenchmarkProgress


class StderrProgress(BenchmarkProgress):
    """One line per phase change on stderr, and a sample count at most every two seconds."""

    def __init__(self) -> None:
        self._prefix = ""
        self._phases = PhaseProgress("")
        self._start = 0.0

    def begin(self, index: int, total: int, planned: PlannedBenchmark) -> None:
        key = planned.key
        what = {"train": " training step", "load": f" under {key.concurrency} callers"}.get(key.mode, "")
        self._prefix = f"[{index + 1}/{total}] {planned.job.model} batch {planned.job.batch_size}{what}"
        self._phases = PhaseProgress(self._prefix)
        self._start = time.monotonic()
        click.echo(f"{self._prefix}: starting worker", err=True)

    def update(self, phase: str, samples: int) -> None:
        self._phases(phase, samples)

    def end(self, record: RunRecord) -> None:
        took = time.monotonic() - self._start
        prepared = record.details.get("prepare")
        if prepared and prepared.get("status") == "ok":
            click.echo(
                f"{self._prefix}: prepare step {prepared['step']} took {prepared['seconds']:.1f} s "
                f"(peak {prepared['peak_rss_mb']:.0f} MiB), not timed",
                err=True,
            )
        if record.status == "ok":
            summary = f"p50 {cell(record.metrics.latency_ms_p50)} ms from {record.metrics.samples} samples"
            if record.metrics.rel_to_reference is not None:
                summary += f", {record.metrics.rel_to_reference:.3f}x its frozen reference"
        else:
            summary = f"{record.status}: {record.error_summary}"
        click.echo(f"{self._prefix}: {summary} ({took:.1f} s)", err=True)


PHASE_LABELS = {"warmup": "warming up", "setup": "loading model", "collect": "size, memory, accuracy"}


class PhaseProgress:
    """A worker job's phases on stderr, one line each (a distillation's epochs among them), and its
    sample count at most every two seconds: what `run` and `optimize` show while a worker works."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._phase = ""
        self._last = 0.0

    def __call__(self, phase: str, samples: int) -> None:
        now = time.monotonic()
        if phase != self._phase or now - self._last >= 2.0:
            text = f"{samples} samples" if phase == "sampling" else PHASE_LABELS.get(phase, phase)
            click.echo(f"{self._prefix}: {text}", err=True)
            self._phase, self._last = phase, now
