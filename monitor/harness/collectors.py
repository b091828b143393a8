"""What the worker records besides latency: environment, host condition, memory, size, GPU figures.

Each collector degrades to None rather than failing the run: a host without NVML or PSI still
gets its latency measured. Torch is imported inside the functions that need it, so the contention
probe and host readings can be used (and tested) without it.
"""

from __future__ import annotations

import ctypes
import gc
import io
import os
import platform
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from monitor.core.catalog import cuda_index
from monitor.core.runs import EnvFingerprint, HostCondition
from monitor.harness.cpu_info import cpu_info
from monitor.harness.process_memory import status_kb

ALLOCATOR_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX")
# Environment variables that steer the math libraries' code paths and thread pools: a change of one
# (MKL_CBWR, KMP_BLOCKTIME, ATEN_CPU_CAPABILITY...) is an environment change like a new torch.
MATH_ENV_PREFIXES = ("OMP_", "MKL_", "KMP_", "GOMP_", "OPENBLAS_", "ONEDNN_", "DNNL_", "ATEN_")
_PSI_CPU = "/proc/pressure/cpu"


def _read_psi_some_us() -> int | None:
    try:
        with open(_PSI_CPU, encoding="ascii") as f:
            return int(f.readline().rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        return None


class CpuContentionProbe:
    """Did anything compete for the CPU during a window?

    Reads the kernel's CPU pressure (PSI, /proc/pressure/cpu): the microseconds during which some
    runnable task waited for a CPU. It is exact to the microsecond, whereas CPU-time accounting in
    /proc/stat is sampled in 10 ms ticks, too coarse for 50 ms windows. Where PSI is missing the probe
    falls back to other processes' CPU time from /proc/stat (busy time minus this process and its
    parent), in % of one core.
    """

    def __init__(self) -> None:
        self.has_psi = _read_psi_some_us() is not None
        self._me = psutil.Process()
        try:
            self._parent: psutil.Process | None = psutil.Process(os.getppid())
        except psutil.Error:
            self._parent = None

    def begin(self) -> tuple[float, float]:
        return time.perf_counter(), self._reading()

    def end(self, token: tuple[float, float]) -> float:
        t0, r0 = token
        wall = time.perf_counter() - t0
        if wall <= 0:
            return 0.0
        if self.has_psi:
            return (self._reading() - r0) / 1e6 / wall * 100
        return max(0.0, (self._reading() - r0) / wall * 100)

    def _reading(self) -> float:
        if self.has_psi:
            return float(_read_psi_some_us() or 0)
        return others_cpu_seconds(self._me, self._parent)


def others_cpu_seconds(me: psutil.Process, parent: psutil.Process | None) -> float:
    """Busy CPU seconds of the whole host minus this process and its parent (tick resolution)."""
    times = psutil.cpu_times()
    busy = times.user + times.nice + times.system + getattr(times, "irq", 0.0)
    busy += getattr(times, "softirq", 0.0) + getattr(times, "steal", 0.0)
    mine = sum(me.cpu_times()[:2])
    if parent is not None:
        try:
            mine += sum(parent.cpu_times()[:2])
        except psutil.Error:
            pass
    return busy - mine


@dataclass
class HostWatch:
    """Host condition over the whole sampling phase: load, others' CPU time, frequency, pressure."""

    _start_wall: float = 0.0
    _start_others: float = 0.0
    _me: psutil.Process = field(default_factory=psutil.Process)
    _parent: psutil.Process | None = None

    def start(self) -> None:
        try:
            self._parent = psutil.Process(os.getppid())
        except psutil.Error:
            self._parent = None
        self._start_wall = time.perf_counter()
        self._start_others = others_cpu_seconds(self._me, self._parent)

    def finish(self, contended_blocks: int, pressure_pct: float | None) -> HostCondition:
        wall = time.perf_counter() - self._start_wall
        others = others_cpu_seconds(self._me, self._parent) - self._start_others
        freq = psutil.cpu_freq()
        return HostCondition(
            loadavg_1m=os.getloadavg()[0],
            others_cpu_pct=round(max(0.0, others) / wall * 100, 2) if wall > 0 else None,
            cpu_freq_mhz=round(freq.current, 1) if freq else None,
            contended_blocks=contended_blocks,
            cpu_pressure_pct=None if pressure_pct is None else round(pressure_pct, 2),
        )


def forward_peak_mb(call: Callable[[], Any], device: str) -> float | None:
    """Memory one call takes at its peak beyond what is resident before it, in MiB: the activations
    and workspace of a model whose weights are loaded. None where it cannot be measured.

    Per subject within one worker, which the process-wide peak RSS cannot tell apart: on CUDA from
    the allocator's peak; on CPU from VmHWM after resetting it (/proc/self/clear_refs). Memory that
    earlier calls freed is first handed back to the kernel (malloc_trim): the worker's pinned
    allocator never trims by itself, and pages it kept would be reused without counting. Resets the
    process's VmHWM: call it after `peak_rss_mb` has been read.
    """
    if device.startswith("cuda"):
        import torch

        dev = torch.device(device)
        torch.cuda.synchronize(dev)
        allocated = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        call()
        torch.cuda.synchronize(dev)
        return (torch.cuda.max_memory_allocated(dev) - allocated) / 2**20
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")
    except (OSError, AttributeError):
        return None
    base = status_kb("VmRSS")
    call()
    peak = status_kb("VmHWM")
    if base is None or peak is None:
        return None
    return max(0.0, (peak - base) / 1024)


def environment(threads: int, interop_threads: int, device: str, nvml: Nvml | None) -> EnvFingerprint:
    """Fingerprint of what the numbers depend on besides the model (gathered once per worker)."""
    import torch

    cpu, flags = cpu_info()
    gpu = driver = None
    if nvml is not None:
        gpu, driver = nvml.name, nvml.driver
    elif device.startswith("cuda") and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(torch.device(device))
    return EnvFingerprint(
        torch=torch.__version__,
        python=platform.python_version(),
        cpu=cpu,
        cpu_count=os.cpu_count(),
        cpu_flags=flags,
        gpu=gpu,
        gpu_driver=driver,
        cuda=torch.version.cuda,
        threads=threads,
        interop_threads=interop_threads,
        host=socket.gethostname(),
        platform=f"{platform.system()} {platform.release()} {platform.machine()}",
        allocator={k: os.environ[k] for k in ALLOCATOR_ENV if k in os.environ},
        math_env={k: v for k, v in sorted(os.environ.items()) if k.startswith(MATH_ENV_PREFIXES)},
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
    )


def model_size(model: Any) -> tuple[int, float]:
    """Parameter count and serialized size (MiB, like every *_mb figure) of the model's state_dict;
    of a model on another runtime, the size of its saved artifact (transforms/runtimes.py)."""
    import torch

    artifact = getattr(model, "artifact", None)
    if isinstance(artifact, bytes):
        return int(getattr(model, "param_count", 0)), len(artifact) / 2**20

    params = sum(p.numel() for p in model.parameters())
    buffer = io.BytesIO()
    # Outside inference_mode: some quantized tensors refuse to be saved from inside it.
    with torch.inference_mode(False):
        torch.save(model.state_dict(), buffer)
    return params, buffer.tell() / 2**20


class Nvml:
    """NVML on one GPU: name, driver, and a sampler of utilisation and power during a window.

    Energy comes from the total-energy counter (mJ) where the GPU has one; otherwise from the
    sampled power integrated over time.
    """

    def __init__(self, pynvml: Any, device: int | str):
        self._nvml = pynvml
        if isinstance(device, str) and not device.isdigit():
            self.handle = pynvml.nvmlDeviceGetHandleByUUID(device)
        else:
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(int(device))
        self.name = _text(pynvml.nvmlDeviceGetName(self.handle))
        self.driver = _text(pynvml.nvmlSystemGetDriverVersion())
        self._samples: list[tuple[float, float | None, float | None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._energy0: int | None = None
        self._t0 = 0.0
        self._elapsed = 0.0

    @classmethod
    def open(cls, device: str) -> Nvml | None:
        """An NVML handle for a CUDA device, or None off-GPU or where NVML is missing."""
        if not device.startswith("cuda"):
            return None
        try:
            import pynvml

            pynvml.nvmlInit()
            index = cuda_index(device)
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            # CUDA numbers the visible devices; NVML numbers all of them (or takes a UUID).
            target: int | str = visible.split(",")[index].strip() if visible else index
            return cls(pynvml, target)
        except Exception:  # noqa: BLE001 - any NVML failure means "no GPU figures", not a failed run
            return None

    def _energy_mj(self) -> int | None:
        try:
            return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        except Exception:  # noqa: BLE001 - counter unsupported on this GPU
            return None

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            util = power = None
            try:
                util = float(self._nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)
            except Exception:  # noqa: BLE001
                pass
            try:
                power = self._nvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0
            except Exception:  # noqa: BLE001
                pass
            self._samples.append((time.perf_counter(), util, power))

    def start(self) -> None:
        self._samples.clear()
        self._stop.clear()
        self._energy0 = self._energy_mj()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._poll, name="perfguard-nvml", daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, Any]:
        """Mean utilisation and power over the window, and the energy spent (J)."""
        self._elapsed = time.perf_counter() - self._t0
        energy1 = self._energy_mj()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        utils = [u for _, u, _ in self._samples if u is not None]
        powers = [p for _, _, p in self._samples if p is not None]
        mean_power = sum(powers) / len(powers) if powers else None
        if self._energy0 is not None and energy1 is not None and energy1 > self._energy0:
            energy = (energy1 - self._energy0) / 1000.0
            source = "counter"
        elif mean_power is not None:
            energy = mean_power * self._elapsed
            source = "power x time"
        else:
            energy, source = None, None
        return {
            "gpu_util_pct": sum(utils) / len(utils) if utils else None,
            "gpu_power_w": mean_power,
            "energy_j": energy,
            "energy_source": source,
            "window_s": self._elapsed,
        }

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


