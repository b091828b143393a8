"""The CPU as /proc/cpuinfo names it: its model and the feature flags that decide which kernels (and
so which optimisation recipes) pay off. Read by the worker's environment fingerprint and by the
parent when it picks recipes, so it imports nothing heavy."""

from __future__ import annotations

import platform

_INTERESTING_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile")


def cpu_info() -> tuple[str | None, list[str]]:
    """The CPU's model name (None if unknown) and which of the flags that matter here it has."""
    model: str | None = None
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key == "flags" and not flags:
                    present = set(value.split())
                    flags = [flag for flag in _INTERESTING_CPU_FLAGS if flag in present]
                if model and flags:
                    break
    except OSError:
        pass
    return model or platform.processor() or None, flags


def cpu_flags() -> list[str]:
    """The CPU features that decide which kernels (and so which optimisation recipes) pay off here."""
    return cpu_info()[1]
