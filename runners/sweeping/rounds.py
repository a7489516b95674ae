"""Paired, interleaved timing: the points a report compares are timed in rounds, side by side in time.

Points of one *comparison* (same probe, length, direction, batch, machine:
everything but the variant) are timed together. Each round runs every point
once, each in a fresh worker process, in an order rotated from round to round,
and goes over every comparison of the run before the next round begins
(:func:`measure_in_rounds`), so a point's rounds sample the whole run. A point's
figure is the median over its rounds, and its ratio to ``full`` is the median
of the per-round ratios (the reference is timed in every round, even when its
own record is already in the store). Drift of the machine between rounds hits
both sides of a round's ratio alike, and a point's several processes average
what one process's memory placement does (see :mod:`runners.measure.paired`).

After ``timing.rounds`` rounds, the points whose interval is wider than
``timing.max_spread`` (relative) get more rounds, beside the reference, up to
``timing.max_rounds``; a point still too wide is recorded ``unstable``.
Memory is measured once per speed point, in a process of its own, before the
rounds: an out-of-memory point is not timed. A point that fails in a round
is recorded with that status; the others go on.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from runners.measure.paired import Estimate, median_interval, paired_ratios
from runners.measure.worker import run_isolated
from runners.reporting.styles import REFERENCE
from runners.sweeping.execute import TimedCall, failed_record, timed_call
from runners.sweeping.plan import TimingSettings

# What each timed probe compares (higher is better), and the other timed fields it reports as medians over rounds.
METRICS = {
    "speed": ("train_tokens_per_s", "infer_tokens_per_s"),
    "cross_speed": ("train_tokens_per_s", "infer_tokens_per_s"),
    "decode": ("decode_tokens_per_s",),
    "cross_decode": ("decode_tokens_per_s",),
    "core": ("fwd_ms", "fwd_bwd_ms"),  # runners.bench: times, lower is better (their ratio too)
}
TIMED_FIELDS = ("decode_ms", "prefill_ms")
# Probes whose process times the reference beside the variant, step by step (or token by token) in turn
# (``paired_attention``): their ratio per round is the median over those steps, ``{metric}_paired_ratio``.
PAIRED_IN_PROCESS = ("speed", "cross_speed", "decode", "cross_decode", "core")
# Per-process extremes of the timed steps, kept as the extremes over every round.
EXTREMES = {
    "train_tokens_per_s_min": min,
    "train_tokens_per_s_max": max,
    "infer_tokens_per_s_min": min,
    "infer_tokens_per_s_max": max,
    "train_step_spread": max,
    "infer_spread": max,
    "decode_spread": max,
}


def comparison_key(point: dict[str, Any]) -> str:
    """What the points of one comparison share: the point without its variant."""
    shared = {key: value for key, value in point.items() if key != "attention"}
    return hashlib.sha256(json.dumps(shared, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass(eq=False)
class Member:
    """One point of a comparison: its store key, whether its record is written (the reference may only be
    re-timed for pairing), its call, and what each round gave."""

    key: str
    point: dict[str, Any]
    write: bool
    call: TimedCall | None = None
    failure: dict[str, Any] | None = None
    memory: dict[str, Any] = field(default_factory=dict)
    rounds: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.point["attention"]["name"]

    @property
    def live(self) -> bool:
        return self.failure is None


def run_part(
    call: TimedCall, parts: list[str] | None, malloc: str | None, *, paired_with: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One process of a timed call: ``parts`` of a speed probe, or the whole decode probe (``parts=None``);
    ``paired_with``: the probe's arguments that name the reference, timed in the same process in turn with
    the variant (:func:`pairing`)."""
    kwargs = call.kwargs if parts is None else call.kwargs | {"parts": parts}
    if paired_with is not None:
        kwargs = kwargs | paired_with
    return run_isolated(call.function, kwargs, threads=call.threads, timeout_s=call.timeout_s, malloc=malloc)


def pairing(member: Member, reference: Member) -> dict[str, Any]:
    """The arguments that make the member's probe time the reference beside it: its attention (the skeleton's
    probes) or its core (``runners.bench``: variant, implementation, hyperparameters)."""
    if member.point["probe"] == "core":
        return {"paired_case": {key: reference.call.kwargs[key] for key in ("variant", "impl", "hparams")}}
    return {"paired_attention": reference.point["attention"]}


def estimates(member: Member, reference: Member | None) -> dict[str, tuple[Estimate, Estimate | None]]:
    """Per metric: the figure over the member's rounds, and its paired ratio to the reference (None: no pairing)."""
    out = {}
    for metric in METRICS[member.point["probe"]]:
        values = {r: result[metric] for r, result in member.rounds.items()}
        figure = median_interval(list(values.values()))
        ratio = None
        in_process = [result.get(f"{metric}_paired_ratio") for result in member.rounds.values()]
        if reference is not None and reference is not member:
            if in_process and None not in in_process:  # the reference was timed beside it in each round's process
                ratio = median_interval(in_process)
            else:
                pairs = paired_ratios(values, {r: result[metric] for r, result in reference.rounds.items()})
                ratio = median_interval(pairs) if pairs else None
        out[metric] = (figure, ratio)
    return out


def too_wide(member: Member, reference: Member | None, settings: TimingSettings) -> list[str]:
    """What is compared and still too uncertain: each metric's paired ratio, as ``"train_tokens_per_s ratio
    0.95-1.30"``, or its figure where there is no pairing. The reference of a comparison is judged by the
    others' ratios, not by its own figure: how fast the machine was is not what the report compares."""
    wide = []
    for metric, (figure, ratio) in estimates(member, reference).items():
        if member is reference:
            continue
        judged = ratio if ratio is not None else figure
        if judged.n < 2 or judged.width > settings.max_spread:
            wide.append(f"{metric}{' ratio' if ratio is not None else ''} {judged.lo:.4g}-{judged.hi:.4g}")
    return wide


def result_of(member: Member, reference: Member | None, settings: TimingSettings) -> dict[str, Any]:
    """The member's record fields: the first round's result, every metric as its median over the rounds with
    its interval and per-round values, the paired ratio to the reference, the memory part, stability."""
    if member.failure is not None:
        return member.failure
    ordered = [member.rounds[r] for r in sorted(member.rounds)]
    result: dict[str, Any] = {"status": "ok"} | ordered[0] | member.memory
    for name in TIMED_FIELDS:
        if name in ordered[0]:
            result[name] = statistics.median(r[name] for r in ordered)
    for name, pick in EXTREMES.items():
        if name in ordered[0]:
            result[name] = pick(r[name] for r in ordered)
    for metric, (figure, ratio) in estimates(member, reference).items():
        result |= {
            metric: figure.median,
            f"{metric}_lo": figure.lo,
            f"{metric}_hi": figure.hi,
            f"{metric}_rounds": [r[metric] for r in ordered],
        }
        if ratio is not None:
            result |= {f"{metric}_ratio": ratio.median, f"{metric}_ratio_lo": ratio.lo, f"{metric}_ratio_hi": ratio.hi}
        elif member is reference:
            result |= {f"{metric}_ratio": 1.0, f"{metric}_ratio_lo": 1.0, f"{metric}_ratio_hi": 1.0}
    unstable = too_wide(member, reference, settings)
    figure = median_interval([r[METRICS[member.point["probe"]][0]] for r in ordered])
    result |= {
        "rounds": len(ordered),
        "interval_coverage": figure.coverage,  # of every interval of this record: distribution-free, 1 - 2^(1-n)
        "ratio_reference": reference.name if reference is not None else None,
        "unstable": bool(unstable),
        "unstable_why": "; ".join(unstable) + f" after {len(ordered)} rounds" if unstable else None,
    }
    return result


@dataclass(eq=False)
class Comparison:
    """The members of one comparison and where their timing stands: the reference, the members still timed
    (after the first ``timing.rounds``, only the wide ones beside the reference) and the rounds run so far."""

    members: list[Member]
    reference: Member | None = None
    timed: list[Member] = field(default_factory=list)
    rounds_run: int = 0
    seconds: float = 0.0  # spent on this comparison so far: its memory processes and its rounds

    def prepare(self, cfg: DictConfig | None) -> None:
        """Each member's call and, once, alone, its memory (an out-of-memory point is not timed)."""
        started = time.perf_counter()
        for member in self.members:
            if member.call is not None:  # given by the caller (runners.bench)
                continue
            try:
                member.call = timed_call(cfg, member.point)
            except Exception as error:  # unsupported (causal, decoding, cross) or a machine without the device
                member.failure = failed_record(error)
        for member in self.members:
            if member.live and member.call.memory:
                try:
                    member.memory = run_part(member.call, ["memory"], malloc=None)
                except Exception as failed:  # a point's failure is its status; the comparison goes on
                    member.failure = failed_record(failed)
        live = [m for m in self.members if m.live]
        self.reference = next((m for m in live if m.name == REFERENCE), None) if len(live) > 1 else None
        self.timed = live
        self.seconds += time.perf_counter() - started

    def wide(self, settings: TimingSettings) -> list[Member]:
        return [m for m in self.timed if m.live and too_wide(m, self.reference, settings)]

    def finished(self, settings: TimingSettings) -> bool:
        """No round left: every member failed, the cap is reached, or every interval is narrow enough."""
        if not any(m.live for m in self.timed) or self.rounds_run >= settings.max_rounds:
            return True
        return self.rounds_run >= settings.rounds and not self.wide(settings)

    def run_round(self, settings: TimingSettings) -> int:
        """One round: every member still timed once, in an order rotated from the last round; returns the number
        of points it timed. Beyond ``timing.rounds``, only the wide members are timed, beside the reference."""
        started, index = time.perf_counter(), self.rounds_run
        if index >= settings.rounds:
            wide = self.wide(settings)
            self.timed = [m for m in self.timed if m in wide or m is self.reference]
        shift = index % max(1, len(self.timed))
        order = [m for m in self.timed[shift:] + self.timed[:shift] if m.live]
        for member in order:
            first = not member.rounds
            parts = (["time", "flops"] if first else ["time"]) if member.call.memory else None
            reference = self.reference
            pair = reference is not None and member is not reference and member.point["probe"] in PAIRED_IN_PROCESS
            try:
                member.rounds[index] = run_part(
                    member.call, parts, malloc="timing", paired_with=pairing(member, reference) if pair else None
                )
            except Exception as failed:  # a point's failure is its status; the comparison goes on
                member.failure = failed_record(failed)
        self.rounds_run += 1
        self.seconds += time.perf_counter() - started
        return len(order)

    def results(self, settings: TimingSettings) -> dict[str, dict[str, Any]]:
        """The result of every member whose record is written, by key (so far, if rounds are still to come)."""
        return {m.key: result_of(m, self.reference, settings) for m in self.members if m.write}


def measure_in_rounds(
    cfg: DictConfig | None,
    comparisons: list[Comparison],
    settings: TimingSettings,
    *,
    on_round: Callable[[int, Comparison, int], None] | None = None,
    on_results: Callable[[Comparison, bool], None] | None = None,
    on_prepared: Callable[[Comparison], None] | None = None,
) -> None:
    """Time several comparisons in rounds that go over all of them, as asv's rounds go over a whole suite.

    Round ``r`` of every comparison runs before round ``r + 1`` of any, so a point's rounds are spread over the
    whole timing phase rather than the seconds of its own length: its median samples the machine's slow and fast
    phases alike (on a shared VM a ratio drifts by ~10% over minutes while steps agree within a round).
    ``on_round(round, comparison, points)`` is called as a comparison's round starts, ``on_results(comparison,
    final)`` after it (``final``: its last), so the caller can keep what was timed should the run be interrupted.
    ``on_prepared(comparison)`` is called once its memory processes have run (minutes at long lengths).
    """
    for comparison in comparisons:
        comparison.prepare(cfg)
        if on_prepared is not None:
            on_prepared(comparison)
        if comparison.finished(settings) and on_results is not None:  # every member failed before timing
            on_results(comparison, True)
    for index in range(settings.max_rounds):
        due = [c for c in comparisons if c.rounds_run == index and not c.finished(settings)]
        if not due:
            break
        for comparison in due:
            if on_round is not None:
                on_round(index + 1, comparison, len([m for m in comparison.timed if m.live]))
            comparison.run_round(settings)
            if on_results is not None:
                on_results(comparison, comparison.finished(settings))


def measure_comparison(
    cfg: DictConfig | None,
    members: list[Member],
    settings: TimingSettings,
    *,
    on_round: Callable[[int, int], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Time one comparison's members in interleaved rounds; the result of every member whose record is written,
    by key. ``on_round(round, points)`` is called as each round starts."""
    comparison = Comparison(members)
    measure_in_rounds(
        cfg,
        [comparison],
        settings,
        on_round=None if on_round is None else lambda index, _, points: on_round(index, points),
    )
    return comparison.results(settings)
