"""Wall-clock timing done right: warm-up, device synchronization, repeats, median."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

MAX_CALLS = 10_000  # a bound on the calls ``min_time_s`` adds, for a call that takes no measurable time


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
    min_time_s: float = 0.0,
) -> Timing:
    """Median time of ``fn()`` after ``warmup`` untimed calls.

    Takes ``repeats`` timed calls, and more while they add up to less than ``min_time_s``: a window of a
    few milliseconds (three 5 ms steps) is shorter than the VM's slow phases and reads one of them or none,
    so short and long steps alike are timed over comparable stretches of time (timeit's autorange).
    With ``budget_s``, stops early once the timed calls used that much time
    (at least 3 repeats are still taken), so slow points stay affordable.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    while len(times) < repeats or (sum(times) < min_time_s and len(times) < MAX_CALLS):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
        if budget_s is not None and len(times) >= 3 and sum(times) > budget_s:
            break
    return timing_of(times)


def timing_of(times: Sequence[float]) -> Timing:
    """The :class:`Timing` of a list of per-call seconds."""
    return Timing(median_s=statistics.median(times), min_s=min(times), max_s=max(times), repeats=len(times))


def time_alternating(
    fns: Sequence[Callable[[], object]],
    *,
    device: torch.device,
    warmup: int = 1,
    repeats: int = 5,
    budget_s: float | None = None,
    min_time_s: float = 0.0,
) -> list[list[float]]:
    """Seconds of each of ``fns`` per cycle, calling them in turn (``a b a b ...``, the order rotating).

    The calls of one cycle are milliseconds apart, so a slow phase of the machine slows every side of the
    cycle alike and the per-cycle ratios of two functions hold where separate processes seconds apart do
    not (two such runs of one comparison differed by 15-25%). Cycles go on until there are ``repeats`` and
    each function's calls add up to ``min_time_s``; ``budget_s`` stops them once the cycles took that long
    (at least 3 are still taken). ``times[i][c]`` is function ``i`` in cycle ``c``.
    """
    for fn in fns:
        for _ in range(warmup):
            fn()
    synchronize(device)
    times: list[list[float]] = [[] for _ in fns]
    spent = 0.0
    while len(times[0]) < MAX_CALLS:
        cycle = len(times[0])
        enough = cycle >= repeats and min(sum(t) for t in times) >= min_time_s
        if enough or (budget_s is not None and cycle >= 3 and spent > budget_s):
            break
        shift = cycle % len(fns)
        for index in [*range(shift, len(fns)), *range(shift)]:
            start = time.perf_counter()
            fns[index]()
            synchronize(device)
            times[index].append(time.perf_counter() - start)
            spent += times[index][-1]
    return times
