"""The run record: what one benchmark of one model at one batch size produced.

This is the boundary type between the harness (which fills it), storage (which persists it) and
everything that reads history (CLI, detection, reports). It is plain dataclasses so that the worker,
the parent and the database layer agree on one shape; `to_json` is the one place that produces the
JSON contract of DESIGN.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Self

RunStatus = Literal["ok", "failed", "timeout"]
RUN_STATUSES: tuple[RunStatus, ...] = ("ok", "failed", "timeout")

# Flags a run can carry; they qualify a stored measurement rather than fail it.
FLAG_CONTENDED = "contended"  # other processes used the CPU and the budget ran out before clean samples
FLAG_UNSTABLE = "unstable"  # the 95 % CI of the median did not reach the target within the budget
FLAG_WARMUP_UNSETTLED = "warmup_unsettled"  # warm-up hit its cap before timings settled


class _JsonFields:
    """to_dict / from_dict for the JSON columns; keys a newer version added are ignored on read."""

    __slots__ = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = dataclasses.asdict(self)  # type: ignore[call-overload]
        return data


@dataclass(slots=True)
class RunMetrics(_JsonFields):
    """Figures of one run; None where not measured (e.g. GPU figures on CPU, accuracy without eval).

    Every `*_mb` figure is in MiB (2**20 bytes), like `memory_limit_mb` in the config.
    """

    latency_ms_p50: float | None = None
    latency_ms_p90: float | None = None
    latency_ms_p99: float | None = None
    latency_ms_mean: float | None = None
    latency_ms_std: float | None = None
    latency_ms_min: float | None = None
    latency_ms_max: float | None = None
    ci95_rel: float | None = None  # half-width of the 95 % CI of the median, relative to the median
    samples: int | None = None
    throughput_per_s: float | None = None
    peak_rss_mb: float | None = None
    cuda_peak_mem_mb: float | None = None
    model_size_mb: float | None = None
    params: int | None = None
    accuracy: float | None = None
    gpu_util_pct: float | None = None
    gpu_power_w: float | None = None
    energy_j_per_inference: float | None = None
    # A relative run: the model timed interleaved with its frozen reference, in the same rounds, so
    # that host drift cancels. `rel_to_reference` is the median of per-round ratios model/reference,
    # with its 95 % interval; the p99 ratio is pooled over the run (per-round blocks are too short).
    rel_to_reference: float | None = None
    rel_to_reference_low: float | None = None
    rel_to_reference_high: float | None = None
    rel_p99_to_reference: float | None = None
    reference_p50_ms: float | None = None
    reference_p99_ms: float | None = None
    # The host-speed probe (monitor/harness/host_probe.py): median ms per call of each fixed workload.
    probe_blas_ms: float | None = None
    probe_python_ms: float | None = None
    probe_cuda_ms: float | None = None


@dataclass(slots=True)
class EnvFingerprint(_JsonFields):
    """What the numbers depend on besides the model: software, hardware and settings of the worker."""

    torch: str | None = None
    python: str | None = None
    cpu: str | None = None
    cpu_count: int | None = None
    cpu_flags: list[str] = field(default_factory=list)
    gpu: str | None = None
    gpu_driver: str | None = None
    cuda: str | None = None
    threads: int | None = None
    interop_threads: int | None = None
    host: str | None = None
    platform: str | None = None
    allocator: dict[str, str] = field(default_factory=dict)
    math_env: dict[str, str] = field(default_factory=dict)  # OMP_*, MKL_*, KMP_*... as the worker saw them
    cpu_capability: str | None = None  # the kernels torch picked for this CPU: AVX2, AVX512, ...


@dataclass(slots=True)
class HostCondition(_JsonFields):
    """The state of the host while the run sampled: load from others can explain a slow reading."""

    loadavg_1m: float | None = None
    others_cpu_pct: float | None = None  # others' CPU use over warm-up and sampling, % of one core
    cpu_freq_mhz: float | None = None
    contended_blocks: int = 0  # sampling blocks discarded because another process used the CPU
    cpu_pressure_pct: float | None = None  # kernel PSI: share of kept sampling time a task waited for CPU


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One stored run. `samples_ms` are the raw per-iteration latencies kept for later statistics."""

    model: str
    variant: str
    device: str
    batch_size: int
    status: RunStatus
    started_at: datetime
    finished_at: datetime
    error: str | None = None
    metrics: RunMetrics = field(default_factory=RunMetrics)
    env: EnvFingerprint = field(default_factory=EnvFingerprint)
    host: HostCondition = field(default_factory=HostCondition)
    flags: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # how sampling went: warm-up, stop reason
    samples_ms: list[float] = field(default_factory=list)
    run_id: int | None = None
    # One per scheduled run and series when a distributed worker stores it: a redelivered job finds
    # its run already stored instead of storing it twice.
    idempotency_key: str | None = None
    # The frozen reference the run was timed against (metrics.rel_to_reference), if it was.
    reference_id: int | None = None
    mode: str = "infer"  # what it timed: infer | train | load (monitor.core.series.SERIES_MODES)
    concurrency: int = 1  # callers at once (load mode)

    @property
    def error_summary(self) -> str:
        """The first line of the error text (the exception or signal), for tables and logs."""
        lines = (self.error or "").strip().splitlines()
        return lines[0] if lines else ""

    def to_storable(self) -> dict[str, Any]:
        """Everything, raw samples included, as JSON-ready values (for a spool awaiting the database)."""
        data = self.to_json()
        data["samples_ms"] = list(self.samples_ms)
        data["idempotency_key"] = self.idempotency_key
        return data

    @classmethod
    def from_storable(cls, data: dict[str, Any]) -> RunRecord:
        return cls(
            model=data["model"],
            variant=data["variant"],
            device=data["device"],
            batch_size=data["batch_size"],
            status=data["status"],
            started_at=datetime.fromisoformat(data["started_at"]),
            finished_at=datetime.fromisoformat(data["finished_at"]),
            error=data["error"],
            metrics=RunMetrics.from_dict(data["metrics"]),
            env=EnvFingerprint.from_dict(data["env"]),
            host=HostCondition.from_dict(data["host"]),
            flags=list(data["flags"]),
            details=dict(data["details"]),
            samples_ms=list(data["samples_ms"]),
            run_id=data["run_id"],
            idempotency_key=data.get("idempotency_key"),
            reference_id=data.get("reference_id"),
            mode=data.get("mode", "infer"),
            concurrency=data.get("concurrency", 1),
        )

    def to_json(self) -> dict[str, Any]:
        """The run as the CLI contract prints it (raw samples left out: they can be large)."""
        return {
            "run_id": self.run_id,
            "model": self.model,
            "variant": self.variant,
            "device": self.device,
            "batch_size": self.batch_size,
            "mode": self.mode,
            "concurrency": self.concurrency,
            "status": self.status,
            "error": self.error,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "flags": list(self.flags),
            "metrics": self.metrics.to_dict(),
            "env": self.env.to_dict(),
            "host": self.host.to_dict(),
            "details": dict(self.details),
            "reference_id": self.reference_id,
        }
