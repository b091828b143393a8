"""Collectors: NVML arithmetic (with a stand-in library: no GPU here), host readings, environment."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from monitor.harness.collectors import CpuContentionProbe, HostWatch, Nvml
from monitor.harness.process_memory import peak_rss_mb


class FakeNvmlLibrary:
    """Answers like pynvml on a GPU drawing 300 W at 80 % utilisation; NVML cannot run on this host."""

    def __init__(self, counter: bool):
        self.counter = counter
        self.start = time.perf_counter()

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("index", index)

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return ("uuid", uuid)

    def nvmlDeviceGetName(self, handle):
        return b"Test GPU"

    def nvmlSystemGetDriverVersion(self):
        return "999.1"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.counter:
            raise RuntimeError("not supported")
        return int((time.perf_counter() - self.start) * 300 * 1000)  # mJ at 300 W

    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=80)

    def nvmlDeviceGetPowerUsage(self, handle):
        return 300_000  # mW

    def nvmlShutdown(self):
        pass


@pytest.mark.parametrize(("counter", "source"), [(True, "counter"), (False, "power x time")])
def test_energy_comes_from_the_counter_or_from_power_times_time(counter, source):
    nvml = Nvml(FakeNvmlLibrary(counter), 0)
    assert (nvml.name, nvml.driver) == ("Test GPU", "999.1")
    nvml.start()
    time.sleep(0.5)
    reading = nvml.stop()
    assert reading["energy_source"] == source
    assert reading["gpu_util_pct"] == 80 and reading["gpu_power_w"] == 300
    assert reading["energy_j"] == pytest.approx(300 * reading["window_s"], rel=0.1)


def test_a_uuid_from_cuda_visible_devices_selects_the_nvml_handle():
    assert Nvml(FakeNvmlLibrary(True), "GPU-1234").handle == ("uuid", "GPU-1234")
    assert Nvml(FakeNvmlLibrary(True), "1").handle == ("index", 1)


def test_no_gpu_figures_off_gpu_or_without_a_driver(monkeypatch):
    import pynvml

    def no_driver() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    assert Nvml.open("cpu") is None
    monkeypatch.setattr(pynvml, "nvmlInit", no_driver)
    assert Nvml.open("cuda:0") is None  # degrade to no GPU figures, don't fail the run


def test_host_watch_reports_load_frequency_and_others_cpu():
    watch = HostWatch()
    watch.start()
    time.sleep(0.2)
    host = watch.finish(contended_blocks=2, pressure_pct=1.5)
    assert host.loadavg_1m is not None and host.loadavg_1m >= 0
    assert host.others_cpu_pct is not None and host.others_cpu_pct >= 0
    assert host.contended_blocks == 2 and host.cpu_pressure_pct == 1.5


def test_peak_rss_grows_with_allocation():
    before = peak_rss_mb()
    block = bytearray(200 * 2**20)
    block[::4096] = b"x" * len(block[::4096])
    assert peak_rss_mb() >= before + 150


def test_the_probe_prefers_psi_where_the_kernel_has_it():
    import os

    assert CpuContentionProbe().has_psi == os.path.exists("/proc/pressure/cpu")


def test_peak_rss_of_a_worker_does_not_include_the_parent_it_was_forked_from():
    import subprocess
    import sys

    ballast = bytearray(300 * 2**20)  # this process is now at least 300 MB resident
    for offset in range(0, len(ballast), 4096):
        ballast[offset] = 1
    child = subprocess.run(
        [sys.executable, "-c", "from monitor.harness.process_memory import peak_rss_mb; print(peak_rss_mb())"],
        capture_output=True, text=True, check=True,
    )
    assert float(child.stdout) < 100, "the child reported its parent's size (ru_maxrss survives exec)"
    del ballast


def test_forward_peak_sees_each_calls_memory_even_under_the_pinned_allocator() -> None:
    """Subjects are measured one after another in one worker, under its allocator pins: each
    measurement must see the call's own 16 MiB again, not the peak of whatever ran before."""
    import subprocess
    import sys

    from monitor.harness.runner import ALLOCATOR_PINS, worker_environment

    script = (
        "import torch; from monitor.harness.collectors import forward_peak_mb as f\n"
        "heavy = lambda: torch.ones(4 * 2**20).sum()\n"  # 16 MiB of float32, below the 32 MiB mmap threshold
        "light = lambda: torch.ones(1024).sum()\n"
        "print(f(heavy, 'cpu'), f(heavy, 'cpu'), f(light, 'cpu'))\n"
    )
    env = worker_environment(None, pin_allocator=True)
    assert all(env[k] == v for k, v in ALLOCATOR_PINS.items())
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    first, second, light = (float(v) for v in done.stdout.split())
    assert 15 <= first < 40 and 15 <= second < 40, done.stdout
    assert light < 4, done.stdout
