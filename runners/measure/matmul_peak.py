"""The machine's measured matmul throughput: the ceiling each variant's GFLOP/s is compared with.

A square matmul is the fastest thing a CPU or GPU does with floating point,
so its rate is a practical peak: a variant at 60% of it wastes little, one at
5% spends its time in memory traffic, softmax or Python. Measured, not taken
from a datasheet, so it matches the threads and the build the numbers come from.
"""

from __future__ import annotations

import torch

from runners.measure.timing import time_calls

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_gflops(dtype: torch.dtype, device: torch.device, *, size: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of the fastest of ``repeats`` ``size x size`` matmuls in ``dtype`` (after one warm-up call).

    The fastest, not the median: this is a ceiling, and on a shared machine
    noise only ever slows a matmul down (a median we took under load read 99
    GFLOP/s on a machine that does 166).
    """
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    timing = time_calls(lambda: a @ b, device=device, warmup=1, repeats=repeats)
    return 2 * size**3 / timing.min_s / 1e9


def matmul_peak(device: torch.device | str = "cpu") -> dict[str, float]:
    """GFLOP/s of the fp32 and bf16 matmul probe, keyed ``"fp32"``/``"bf16"`` (a dtype that fails is left out)."""
    device = torch.device(device)
    peak = {}
    for name, dtype in DTYPES.items():
        try:
            peak[name] = round(matmul_gflops(dtype, device), 1)
        except RuntimeError:  # a device without this dtype's matmul
            continue
    return peak
