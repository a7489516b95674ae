"""The machine's measured matmul throughput: the ceiling each variant's GFLOP/s is compared with.

A square matmul is the fastest thing a CPU or GPU does with floating point,
so its rate is a practical peak: a variant at 60% of it wastes little, one at
5% spends its time in memory traffic, softmax or Python. Measured, not taken
from a datasheet, so it matches the threads and the build the numbers come from.

The probe is bounded in time on any machine: it calibrates on a tiny matmul
and grows the size only while a handful of calls still fit its budget, so a
device that is a thousand times slower in some dtype costs the same seconds
(a fixed 2048x2048 probe once took ten minutes in emulated bf16). A dtype the
device would only emulate (:func:`runners.measure.bf16.bf16_native`) is not
measured at all: its "peak" would be a reference implementation's speed.
"""

from __future__ import annotations

import time

import torch

from runners.measure.bf16 import bf16_native
from runners.measure.timing import synchronize

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SIZES = (64, 128, 256, 512, 1024, 2048, 4096)  # candidate square sizes, smallest first
MIN_CALLS = 6  # the chosen size must afford this many calls (warm-up + repeats) within the budget


def _one_call_s(a: torch.Tensor, b: torch.Tensor, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    a @ b
    synchronize(device)
    return time.perf_counter() - start


def matmul_gflops(
    dtype: torch.dtype, device: torch.device, *, budget_s: float = 2.5, max_repeats: int = 16
) -> tuple[float, int]:
    """GFLOP/s of the fastest timed square matmul in ``dtype``, and the size it was measured at.

    The largest size of :data:`SIZES` that affords :data:`MIN_CALLS` calls within ``budget_s``
    (predicted from the size below it, timed on the way up), then up to ``max_repeats`` more calls
    while the calls so far and one more stay within the budget. The time spent is bounded on any
    device: by ``budget_s`` plus one call, or by one 64x64 matmul where even that is slower. The
    fastest call, not the median: this is a ceiling, and on a shared machine noise only ever slows
    a matmul down (a median we took under load read 99 GFLOP/s on a machine that does 166).
    """

    def operands(size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(torch.randn(size, size, device=device).to(dtype) for _ in range(2))

    size = SIZES[0]
    a, b = operands(size)
    spent = _one_call_s(a, b, device)  # lazy initialisation (kernels, handles) is not the matmul
    if spent >= budget_s:  # a device this slow gets no second call: the warm-up is the measurement
        return 2 * size**3 / spent / 1e9, size
    fastest = _one_call_s(a, b, device)
    spent += fastest
    for larger in SIZES[1:]:
        if fastest * (larger / size) ** 3 * MIN_CALLS > budget_s:
            break
        size = larger
        a, b = operands(size)
        warmup = _one_call_s(a, b, device)  # page faults of the new size's output: not its speed
        spent += warmup
        if spent + warmup > budget_s:
            fastest = warmup
            break
        fastest = _one_call_s(a, b, device)  # the warm call predicts the next size: a noisy first call had us
        spent += fastest  # stop one size short, and a smaller matmul reads a lower peak (103 vs 162 GFLOP/s)
    for _ in range(max_repeats):
        if spent + fastest > budget_s:
            break
        call = _one_call_s(a, b, device)
        spent += call
        fastest = min(fastest, call)
    return 2 * size**3 / fastest / 1e9, size


ATTEMPTS = 3  # independent measurements, each with fresh operands: the peak is the fastest of them


def matmul_peak_attempts(
    device: torch.device | str = "cpu", *, attempts: int = ATTEMPTS, budget_s: float = 1.0
) -> dict[str, list[float]]:
    """GFLOP/s of ``attempts`` independent fp32 and bf16 matmul probes, keyed ``"fp32"``/``"bf16"``.

    Each attempt allocates its own operands: one process's reading moved by +-9% between processes (where the
    operands land, how much of the second vCPU the VM gives), so a single probe is a sample, and the fastest of
    a few is a steadier ceiling. Left out: bf16 where the device only emulates it, and any dtype whose matmul
    fails.
    """
    device = torch.device(device)
    peak = {}
    for name, dtype in DTYPES.items():
        if dtype == torch.bfloat16 and not bf16_native(device):
            continue
        try:
            peak[name] = [round(matmul_gflops(dtype, device, budget_s=budget_s)[0], 1) for _ in range(attempts)]
        except RuntimeError:  # a device without this dtype's matmul
            continue
    return peak


def describe_peak(gflops: dict[str, float], *, bf16_native: bool | None, on_gpu: bool = False) -> str:
    """The peak in words, e.g. ``fp32 144 GFLOP/s; bf16: emulated on this CPU, not measured``.

    ``bf16_native`` is None for records from before the fingerprint recorded it.
    """
    parts = [f"{dtype} {rate:,.0f} GFLOP/s" for dtype, rate in gflops.items()]
    if "bf16" not in gflops and bf16_native is False:
        parts.append(f"bf16: emulated on this {'GPU' if on_gpu else 'CPU'}, not measured")
    return "; ".join(parts) or "not measured"
