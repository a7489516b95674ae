"""Wall-clock timing done right: warm-up, device synchronization, repeats, median."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so that a timer measures work, not launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    """Seconds per call over repeated timed calls."""

    median_s: float
    min_s: float
    max_s: float
    repeats: int

    @property
    def spread(self) -> float:
        """(max - min) / median: how noisy the repeats were."""
        return (self.max_s - self.min_s) / self.median_s if self.median_s > 0 else 0.0


def time_calls(
    fn: Callable[[], object],
    *,
    device: torch.device,
    warmup: int = 1,
    repeats: int = 5,
    budget_s: float | None = None,
) -> Timing:
    """Median time of ``fn()`` after ``warmup`` untimed calls.

    With ``budget_s``, stops early once the timed calls used that much time
    (at least 3 repeats are still taken), so slow points stay affordable.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    while len(times) < repeats:
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
        if budget_s is not None and len(times) >= 3 and sum(times) > budget_s:
            break
    return Timing(median_s=statistics.median(times), min_s=min(times), max_s=max(times), repeats=len(times))
