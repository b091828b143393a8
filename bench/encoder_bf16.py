"""bf16 forms of the BERT-base-sized encoder in one process: weights cast, autocast, MHA fast path off.

    .venv/bin/python bench/encoder_bf16.py

Prints ms per call (6 calls after 2 warm-up calls) for fp32, the weights cast to bf16 (the `bf16`
recipe), autocast, and both without the MHA fast path: why the `bf16` recipe casts, and what the
fast path is worth (bench/RESULTS.md section 9).
"""

from __future__ import annotations

import copy
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from monitor.examples.models import encoder  # noqa: E402


def per_call_ms(call: Callable[[], Any], calls: int = 6) -> float:
    with torch.inference_mode():
        call()
        call()
        start = time.perf_counter()
        for _ in range(calls):
            call()
        return (time.perf_counter() - start) / calls * 1e3


def main() -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(2)
    torch.set_num_interop_threads(1)
    model, x = encoder(), torch.randn(8, 128, 768)
    cast, x_bf16 = copy.deepcopy(model).to(torch.bfloat16), x.to(torch.bfloat16)

    def autocast() -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x)

    print(f"fp32              {per_call_ms(lambda: model(x)):8.1f} ms")
    print(f"bf16 weights cast {per_call_ms(lambda: cast(x_bf16)):8.1f} ms")
    print(f"bf16 autocast     {per_call_ms(autocast):8.1f} ms")
    torch.backends.mha.set_fastpath_enabled(False)
    print(f"cast, no fastpath {per_call_ms(lambda: cast(x_bf16)):8.1f} ms")
    print(f"fp32, no fastpath {per_call_ms(lambda: model(x)):8.1f} ms")


if __name__ == "__main__":
    main()
