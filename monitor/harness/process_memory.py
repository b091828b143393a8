"""This process's resident memory as Linux counts it, without torch: the worker's collectors read it,
and so do load-caller processes (harness/load.py), which must not import torch to report it."""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB, since it started its own program.

    Linux's VmHWM (the high-water mark of this address space), not ru_maxrss: ru_maxrss survives
    exec, so a worker forked from a 300 MB parent would report at least the parent's size, and the
    series would move whenever the parent grew (bench/detection_real.py caught exactly that).
    """
    peak = status_kb("VmHWM")
    if peak is not None:
        return peak / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS


def status_kb(field: str) -> int | None:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM); None where there is no such file."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None
