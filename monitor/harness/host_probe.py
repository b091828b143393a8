"""The host-speed probe: fixed work that does not depend on torch, timed beside every benchmark.

A model's latency moves for three reasons: the model changed, its environment changed (torch, threads,
a math library's code path), or the host got slower (another tenant, a lower clock, steal time). The
frozen reference cancels the host in the model's reading; the probe tells the host's share apart: if
the probe slowed down with everything else, the host did. Two figures, each its own series:
- `blas`: a fixed 128x128 float32 matrix product through numpy's BLAS, on one thread;
- `python`: a fixed pure-Python loop (the interpreter and one core, no library at all).

The probe must not disturb the model it is timed beside. Thread pools spin after a call (OpenBLAS's
threads, Intel OpenMP's KMP_BLOCKTIME of 200 ms, ONNX Runtime's): a probe using numpy's default pool
would leave a thread spinning through the model's next block (measured here: a 128x128 product on
two threads kept the second thread 100 % busy). So the BLAS product runs with the pool limited to
one thread for the probe's own block only (threadpoolctl), which leaves nothing to spin and leaves
numpy's setting for the model untouched.

Torch-free on purpose, like sampling.py: the daemon's tests can time it without torch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from threadpoolctl import ThreadpoolController

from monitor.harness.sampling import block_runner

BLAS_SIZE = 128
PYTHON_ITERATIONS = 2000
# Of each ~50 ms sampling round: enough calls for a steady median, little time taken from the model.
SHARE = 0.04
LABELS = {"blas": "probe.blas", "python": "probe.python"}


def python_loop() -> int:
    """A fixed amount of interpreter work: integer arithmetic in a plain loop."""
    total = 0
    for i in range(PYTHON_ITERATIONS):
        total += i * i
    return total


class HostSpeedProbe:
    """The probe's callables, ready to time: one block runner per figure."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self._a = rng.standard_normal((BLAS_SIZE, BLAS_SIZE), dtype=np.float32)
        self._b = rng.standard_normal((BLAS_SIZE, BLAS_SIZE), dtype=np.float32)
        self._pools = ThreadpoolController()

    def blas(self) -> None:
        np.matmul(self._a, self._b)

    def runners(self) -> list[tuple[str, Callable[[int], list[int]]]]:
        """(label, block runner) for each figure; the BLAS block runs on one thread, then restores."""
        time_blas = block_runner(self.blas)

        def blas_block(n: int) -> list[int]:
            with self._pools.limit(limits=1, user_api="blas"):
                return time_blas(n)

        return [(LABELS["blas"], blas_block), (LABELS["python"], block_runner(python_loop))]
