"""A stand-in for the NVML meter (sampling.MeasuredWindow) that notes when it ran, for the tests that
check a window brackets only what is counted: sampling after warm-up, a load level's window."""

from __future__ import annotations

import time


class RecordingWindow:
    """A MeasuredWindow that notes when it was started and stopped; it reports 10 J over its window."""

    def __init__(self) -> None:
        self.started = self.stopped = 0.0

    def start(self) -> None:
        self.started = time.perf_counter()

    def stop(self) -> dict[str, float]:
        self.stopped = time.perf_counter()
        return {"energy_j": 10.0, "window_s": self.stopped - self.started}
