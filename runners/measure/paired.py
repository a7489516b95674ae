"""How sure a timed number is: medians over rounds, paired ratios, and distribution-free intervals.

A VM's speed drifts on a scale of seconds to minutes (other tenants, clock,
memory placement), far more than the steps inside one measurement disagree.
So a figure is measured in *rounds* (each point once per round, in its own
process, every point of a comparison in turn, as asv's ``rounds`` and pyperf's
processes do), and a comparison is the **median of the per-round ratios**: drift
that slows a round slows both sides of its ratio. The interval given with a
median is the distribution-free one from order statistics (no normality
assumed): for n rounds it is the range between the k-th smallest and the
k-th largest value, with k the largest rank whose coverage is still at least
``confidence``; below 6 rounds that is [min, max], whose coverage
1 - 2^(1 - n) is recorded beside it (75% for 3 rounds, 94% for 5).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Estimate:
    """A median with its interval and the interval's coverage."""

    median: float
    lo: float
    hi: float
    n: int
    coverage: float

    @property
    def width(self) -> float:
        """(hi - lo) / median: the interval relative to the value."""
        return (self.hi - self.lo) / self.median if self.median > 0 else math.inf

    def straddles(self, value: float) -> bool:
        """The interval contains ``value`` (a ratio whose interval holds 1 names no winner)."""
        return self.lo <= value <= self.hi


def _binomial_cdf_half(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


def median_interval(values: Sequence[float], *, confidence: float = 0.95) -> Estimate:
    """The median of ``values`` and its distribution-free interval (see the module docstring)."""
    ordered = sorted(float(v) for v in values)
    n = len(ordered)
    if n == 0:
        raise ValueError("median_interval needs at least one value")
    # the widest-rank interval [x_(k), x_(n+1-k)] (1-based) whose coverage 1 - 2 P(X <= k - 1) is >= confidence
    k = 1
    while k + 1 <= (n + 1) // 2 and 1 - 2 * _binomial_cdf_half(k, n) >= confidence:
        k += 1
    coverage = 1 - 2 * _binomial_cdf_half(k - 1, n) if n > 1 else 0.0
    return Estimate(statistics.median(ordered), ordered[k - 1], ordered[n - k], n, round(coverage, 4))


def paired_ratios(values: dict[int, float], reference: dict[int, float]) -> list[float]:
    """``values[r] / reference[r]`` for every round ``r`` both were measured in (a failed round pairs nothing)."""
    return [values[r] / reference[r] for r in sorted(values.keys() & reference.keys()) if reference[r] > 0]


def describe(estimate: Estimate | None, fmt: str = "{:.2f}") -> str:
    """'1.78 (1.70-1.85)': a median with its interval, for a table cell."""
    if estimate is None:
        return ""
    return f"{fmt.format(estimate.median)} ({fmt.format(estimate.lo)}-{fmt.format(estimate.hi)})"
