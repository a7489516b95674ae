"""Crossover lengths: from which sequence length a variant is faster (or leaner) than exact attention.

CAB (Zhang et al. 2023) calls it the *efficiency length*. Here it comes from the
ratio r(n) = cost of the variant / cost of ``full`` at the lengths both were
measured (cost: seconds per token of a training or inference step, peak MiB of
a training step, seconds per decoded token). Power laws make log r linear in
log n, so:

- a crossover between two measured lengths (worse at the shorter, better at the
  longer and every length beyond) is interpolated in log-log between them;
- one outside the measured range is extrapolated from the fitted growth (least
  squares of log r over log n, over the lengths named in the answer), and marked so;
- where the variant is worse at the longest length and its ratio does not fall
  with n (or would cross only beyond ``HORIZON`` times the longest length), the
  answer is "never", which is a valid answer;
- memory only: where the ratio ends within ``MEMORY_TIE`` of 1, the answer is a
  tie over the lengths where it stays there. Live tensor bytes repeat exactly,
  but a flat ratio of 0.997 or 1.003 is no trend to extrapolate (it gave
  "leaner from ~0" and "~16,000" for variants whose peak is set outside attention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from runners.reporting.styles import CAUSAL, REFERENCE
from runners.reporting.tables import by_variant

HORIZON = 1000  # an extrapolated crossover beyond 1000x the longest measured length is reported as never
BETTER_EVERYWHERE = "everywhere"  # better at every measured length, and the fit gives no shorter crossing
INTERPOLATED = "interpolated"
EXTRAPOLATED = "extrapolated"
NEVER = "never"
TIES = "ties"  # memory: within MEMORY_TIE of the reference from some length to the longest
MEMORY_TIE = 0.02  # the same band as the report's memory picks (runners/reporting/choice.py)


@dataclass(frozen=True)
class Crossover:
    """Where a variant starts to beat the reference, and what the answer rests on."""

    kind: str  # one of BETTER_EVERYWHERE, INTERPOLATED, EXTRAPOLATED, NEVER
    length: float | None  # the crossover length; None for BETTER_EVERYWHERE and NEVER
    lengths: tuple[int, ...]  # the measured lengths the answer rests on (bracket, or those fitted)
    exponent: float  # fitted p of r ~ n^p over all shared lengths: below 0, the variant gains with n
    uncertain: tuple[int, ...] = ()  # measured lengths where the paired ratio's interval holds 1: no winner there
    tie: float = 0.0  # TIES: the band around 1

    def cell(self) -> str:
        """The answer in a table cell: '~1,400 (between 1,024 and 2,048)', '~9,800 (extrapolated from ...)'."""
        return self._answer() + self._doubt()

    def _doubt(self) -> str:
        """Where a length the answer rests on is a tie within the timing interval, the cell says so."""
        tied = sorted(set(self.lengths) & set(self.uncertain))  # the bracket, or the lengths fitted
        if not tied:
            return ""
        return f"; uncertain: at n={', '.join(f'{n:,}' for n in tied)} the timing interval holds 1 (a tie)"

    def _answer(self) -> str:
        span = f"{self.lengths[0]:,}-{self.lengths[-1]:,}"
        if self.kind == INTERPOLATED:
            return f"~{self.length:,.0f} (between {self.lengths[0]:,} and {self.lengths[-1]:,})"
        if self.kind == EXTRAPOLATED:
            return f"~{self.length:,.0f} (extrapolated from {span}, ratio ~ n^{self.exponent:.2f})"
        if self.kind == TIES:
            where = span if len(self.lengths) > 1 else f"{self.lengths[0]:,}"
            return f"ties (within {self.tie:.0%} at {where})"
        if self.kind == BETTER_EVERYWHERE:
            return f"<= {self.lengths[0]:,} (at every measured length, {span})"
        return f"never (not up to {self.lengths[-1]:,}; ratio ~ n^{self.exponent:.2f} over {span})"


def _fit(log_n: np.ndarray, log_r: np.ndarray) -> tuple[float, float]:
    """Intercept and slope of the least-squares line of log r over log n."""
    slope, intercept = np.polyfit(log_n, log_r, 1)
    return float(intercept), float(slope)


def _zero(intercept: float, slope: float) -> float:
    """The length where the fitted ratio is 1 (inf where the line is flat or the length astronomical)."""
    if abs(slope) < 1e-9:
        return math.inf
    log_length = -intercept / slope
    return math.exp(log_length) if log_length < math.log(1e15) else math.inf


def crossover(cost: pd.Series, reference: pd.Series) -> Crossover | None:
    """Where ``cost`` (indexed by length, lower is better) drops below ``reference`` for good.

    None when the two share fewer than two measured lengths (nothing to fit). A ratio of exactly 1
    counts as not better.
    """
    return crossover_of_ratio(cost / reference.reindex(cost.index))


def crossover_of_ratio(ratio: pd.Series, *, tie: float = 0.0) -> Crossover | None:
    """:func:`crossover` from the cost ratio variant / reference by length (below 1: the variant is better).

    ``tie`` > 0: a ratio within ``tie`` of 1 at the longest length is a tie (:data:`TIES`) over the lengths
    where it stays within it, not a trend.
    """
    ratio = ratio.replace([np.inf, -np.inf], np.nan).dropna()
    ratio = ratio[ratio > 0].sort_index()
    if len(ratio) < 2:
        return None
    lengths = tuple(int(n) for n in ratio.index)
    log_n, log_r = np.log(np.asarray(lengths, dtype=float)), np.log(ratio.to_numpy(dtype=float))
    slope = _fit(log_n, log_r)[1]
    within = np.abs(ratio.to_numpy(dtype=float) - 1) <= tie
    if tie > 0 and within[-1]:
        first = len(within)
        while first > 0 and within[first - 1]:
            first -= 1
        return Crossover(TIES, None, lengths[first:], slope, tie=tie)
    better = log_r < 0
    if better[-1]:
        first = len(better)
        while first > 0 and better[first - 1]:  # walk back while it stays better
            first -= 1
        if first > 0:  # bracketed: interpolate between the last worse and the first better length
            (n0, n1), (r0, r1) = log_n[first - 1 : first + 1], log_r[first - 1 : first + 1]
            length = math.exp(n0 + (0 - r0) * (n1 - n0) / (r1 - r0))
            return Crossover(INTERPOLATED, length, (lengths[first - 1], lengths[first]), slope)
        for lo, hi in ((0, len(lengths)), (0, 2)):  # below the range: the whole fit, else the two shortest
            b, s = _fit(log_n[lo:hi], log_r[lo:hi])
            if s < 0 and _zero(b, s) < lengths[0]:
                return Crossover(EXTRAPOLATED, _zero(b, s), lengths[lo:hi], s)
        return Crossover(BETTER_EVERYWHERE, None, lengths, slope)
    for lo in (0, len(lengths) - 2):  # beyond the range: the whole fit, else the two longest
        b, s = _fit(log_n[lo:], log_r[lo:])
        if s < 0 and lengths[-1] < _zero(b, s) <= HORIZON * lengths[-1]:
            return Crossover(EXTRAPOLATED, _zero(b, s), lengths[lo:], s)
    return Crossover(NEVER, None, lengths, slope)


# metric label -> (column, lower is better?) ; throughputs are inverted into a cost per token
TIED_METRICS = {"peak_memory_mib": MEMORY_TIE}  # columns whose ratio near 1 is a tie (see the module docstring)
SPEED_METRICS = {
    "faster training from n =": ("train_tokens_per_s", False),
    "faster inference from n =": ("infer_tokens_per_s", False),
    "leaner (peak memory) from n =": ("peak_memory_mib", True),
}


def cost_series(group: pd.DataFrame, column: str, lower_is_better: bool) -> pd.Series:
    """A cost by length (lower is better) from the ok points of ``group``: throughputs become 1/throughput."""
    ok = group[group.status == "ok"].dropna(subset=[column]).drop_duplicates("seq_len", keep="last")
    values = ok.set_index("seq_len")[column].astype(float)
    return values if lower_is_better else 1.0 / values


def reference_name(variant: str) -> str:
    """The row a variant is compared with: ``full``, or ``full (causal)`` for a causal speed row."""
    return REFERENCE + CAUSAL if variant.endswith(CAUSAL) else REFERENCE


def paired_crossover(
    group: pd.DataFrame, reference: pd.DataFrame, column: str, lower_is_better: bool
) -> Crossover | None:
    """The crossover of one variant's points (``group``) with the reference's on ``column``.

    Where the points carry the paired ratio of interleaved rounds (``{column}_ratio``, higher is better), the
    cost ratio is its inverse and the lengths whose interval holds 1 are marked uncertain; elsewhere it is
    the quotient of the two costs.
    """
    quotient = cost_series(group, column, lower_is_better) / cost_series(reference, column, lower_is_better)
    paired = f"{column}_ratio"
    ok = group[group.status == "ok"]
    if paired not in ok or ok[paired].isna().all():
        return crossover_of_ratio(quotient, tie=TIED_METRICS.get(column, 0.0))
    ok = ok.dropna(subset=[paired]).drop_duplicates("seq_len", keep="last").set_index("seq_len")
    ratio = (1.0 / ok[paired].astype(float)).combine_first(quotient)
    holds_one = ok[(ok[f"{paired}_lo"] <= 1.0) & (ok[f"{paired}_hi"] >= 1.0)].index
    answer = crossover_of_ratio(ratio)
    if answer is None:
        return None
    return Crossover(answer.kind, answer.length, answer.lengths, answer.exponent, tuple(int(n) for n in holds_one))


def crossovers(speed: pd.DataFrame, metrics: dict[str, tuple[str, bool]] = SPEED_METRICS) -> dict:
    """{variant: {metric label: Crossover | None}} for the speed points of one hardware fingerprint."""
    answers: dict[str, dict[str, Crossover | None]] = {}
    for variant, group in speed.groupby("variant", sort=True):
        reference = speed[speed.variant == reference_name(variant)]
        if variant == reference_name(variant) or reference.empty:
            continue
        answers[variant] = {
            label: paired_crossover(group, reference, column, low) for label, (column, low) in metrics.items()
        }
    return answers


def crossover_table(speed: pd.DataFrame, metrics: dict[str, tuple[str, bool]] = SPEED_METRICS) -> pd.DataFrame:
    """variant x metric cells of :func:`crossovers` (blank where fewer than two lengths are shared)."""
    rows = {
        variant: {label: answer.cell() if answer else "" for label, answer in row.items()}
        for variant, row in crossovers(speed, metrics).items()
    }
    if not rows:
        return pd.DataFrame()
    return by_variant(pd.DataFrame.from_dict(rows, orient="index").rename_axis("variant"))


def value_at(values: pd.Series, seq_len: int) -> tuple[float, str] | None:
    """A measurement at ``seq_len`` from the lengths it was taken at (index), and how it was obtained.

    Measured there; else interpolated in log-log between the two measured lengths around it; else
    extrapolated from the power law fitted over every measured length (named in the answer). None with
    fewer than two lengths to go on.
    """
    values = values[values > 0].dropna().sort_index()
    if seq_len in values.index:
        return float(values.loc[seq_len]), "measured"
    if len(values) < 2:
        return None
    lengths = values.index.to_numpy(dtype=float)
    log_n, log_v = np.log(lengths), np.log(values.to_numpy(dtype=float))
    if lengths[0] < seq_len < lengths[-1]:
        hi = int(np.searchsorted(lengths, seq_len))
        value = float(np.exp(np.interp(math.log(seq_len), log_n[hi - 1 : hi + 1], log_v[hi - 1 : hi + 1])))
        return value, f"interpolated between {int(lengths[hi - 1]):,} and {int(lengths[hi]):,}"
    intercept, slope = _fit(log_n, log_v)
    value = math.exp(intercept + slope * math.log(seq_len))
    return value, f"extrapolated from {int(lengths[0]):,}-{int(lengths[-1]):,} (~ n^{slope:.2f})"
