"""Paired, interleaved timing: intervals of medians, per-round ratios, and the rounds of a comparison."""

from __future__ import annotations

import statistics
import time

import pytest
import torch
from omegaconf import OmegaConf

from runners.measure.paired import median_interval, paired_ratios
from runners.measure.timing import time_alternating, time_calls
from runners.sweeping import rounds
from runners.sweeping.execute import TimedCall
from runners.sweeping.plan import ConfigError, TimingSettings, timing_settings


def test_median_interval_is_the_order_statistics_range_with_its_coverage():
    three = median_interval([3.0, 1.0, 2.0])
    assert (three.median, three.lo, three.hi, three.coverage) == (2.0, 1.0, 3.0, 0.75)
    five = median_interval([5, 1, 4, 2, 3])
    assert (five.lo, five.hi, five.coverage) == (1, 5, 0.9375)
    nine = median_interval(range(1, 10))  # from 9 values on, the extremes are left out at 95%
    assert (nine.lo, nine.hi) == (2, 8) and nine.coverage >= 0.95
    assert median_interval([2.0, 2.2]).width == pytest.approx(0.2 / 2.1)


def test_paired_ratios_pair_only_rounds_both_sides_measured():
    assert paired_ratios({0: 2.0, 1: 4.0, 2: 9.0}, {0: 1.0, 1: 2.0}) == [2.0, 2.0]


class Drifting:
    """A fake machine whose speed doubles and halves from one round to the next; variants keep their ratio."""

    def __init__(self, speeds: dict[str, float], noisy: set[str] = frozenset()) -> None:
        self.speeds, self.noisy, self.calls, self.round, self.paired = speeds, noisy, [], 0, []

    def start_round(self, index: int, points: int) -> None:
        self.round = index

    def drift(self) -> float:
        return 2.0 if self.round % 2 else 1.0  # the machine runs twice as fast in every other round

    def __call__(self, call: TimedCall, parts, malloc, paired_with=None):
        name = call.kwargs["name"]
        self.calls.append(name)
        jitter = (1.5 if self.calls.count(name) % 2 else 0.7) if name in self.noisy else 1.0
        value = self.speeds[name] * self.drift() * jitter
        result = {"train_tokens_per_s": value, "infer_tokens_per_s": 3 * value, "params": 1}
        if paired_with is not None:  # the reference timed in the same process, step by step: the same drift
            self.paired.append(name)
            ratio = self.speeds[name] * jitter / self.speeds[paired_with["paired_attention"]["name"]]
            result |= {"train_tokens_per_s_paired_ratio": ratio, "infer_tokens_per_s_paired_ratio": ratio}
        return result


class DriftingPerProcess(Drifting):
    """A machine whose speed changes from one process to the next, inside a round too."""

    def drift(self) -> float:
        return 1.0 + 0.37 * (len(self.calls) % 3)


def comparison(monkeypatch, speeds, settings, noisy=frozenset(), stored=(), machine=Drifting):
    fake = machine(speeds, set(noisy))
    monkeypatch.setattr(rounds, "run_part", fake)
    monkeypatch.setattr(
        rounds, "timed_call", lambda cfg, point: TimedCall("x:y", {"name": point["attention"]["name"]}, 1, 9.0, False)
    )
    members = [
        rounds.Member(name, {"probe": "speed", "seq_len": 64, "attention": {"name": name}}, write=name not in stored)
        for name in speeds
    ]
    results = rounds.measure_comparison(OmegaConf.create({}), members, settings, on_round=fake.start_round)
    return results, fake.calls


def test_drift_between_processes_cancels_in_the_paired_ratio(monkeypatch):
    results, calls = comparison(monkeypatch, {"full": 100.0, "linear": 250.0}, TimingSettings(3, 6, 0.1))
    linear = results["linear"]
    # the figures saw the machine's 2x drift, the ratio of each round did not
    assert linear["train_tokens_per_s_hi"] / linear["train_tokens_per_s_lo"] == pytest.approx(2.0)
    assert linear["train_tokens_per_s_ratio"] == pytest.approx(2.5)
    assert linear["train_tokens_per_s_ratio_lo"] == linear["train_tokens_per_s_ratio_hi"] == pytest.approx(2.5)
    assert linear["rounds"] == 3 and not linear["unstable"] and linear["ratio_reference"] == "full"
    assert results["full"]["train_tokens_per_s_ratio"] == 1.0
    assert calls == ["full", "linear", "linear", "full", "full", "linear"]  # each round in a rotated order


def test_the_reference_timed_in_the_variants_process_gives_the_ratio_where_processes_drift(monkeypatch):
    """Each process runs at its own speed: a ratio of two processes is off by up to 1.74x, the in-process one
    is not; the reference's own process still gives its figure."""
    speeds = {"full": 100.0, "linear": 250.0}
    results, _ = comparison(monkeypatch, speeds, TimingSettings(3, 3, 0.1), machine=DriftingPerProcess)
    assert results["linear"]["train_tokens_per_s_ratio"] == pytest.approx(2.5)
    assert results["linear"]["train_tokens_per_s_ratio_lo"] == results["linear"]["train_tokens_per_s_ratio_hi"]
    assert not results["linear"]["unstable"]
    monkeypatch.setattr(rounds, "PAIRED_IN_PROCESS", ())  # as for runners.bench's cores: two processes a ratio
    without, _ = comparison(monkeypatch, speeds, TimingSettings(3, 3, 0.1), machine=DriftingPerProcess)
    assert without["linear"]["train_tokens_per_s_ratio"] != pytest.approx(2.5)


def test_a_wide_point_gets_more_rounds_up_to_the_cap_then_is_flagged(monkeypatch):
    results, calls = comparison(
        monkeypatch, {"full": 100.0, "linear": 250.0, "local": 80.0}, TimingSettings(3, 5, 0.1), noisy={"local"}
    )
    assert results["local"]["rounds"] == 5 and results["local"]["unstable"]
    assert "train_tokens_per_s ratio" in results["local"]["unstable_why"]
    assert results["linear"]["rounds"] == 3 and not results["linear"]["unstable"]  # it was settled: no extra rounds
    assert calls.count("full") == 5 and calls.count("linear") == 3  # the reference is timed beside every extra round


def test_a_reference_already_in_the_store_is_timed_for_pairing_but_not_returned(monkeypatch):
    results, calls = comparison(
        monkeypatch, {"full": 100.0, "linear": 50.0}, TimingSettings(3, 3, 0.1), stored={"full"}
    )
    assert set(results) == {"linear"} and calls.count("full") == 3
    assert results["linear"]["train_tokens_per_s_ratio"] == pytest.approx(0.5)


def test_rounds_go_over_every_comparison_before_the_next_round_of_any(monkeypatch):
    """asv's rounds: a point's rounds are spread over the whole timing phase, not the seconds of its own length;
    results are offered after every round, the last one marked final."""
    fake = Drifting({"full": 100.0, "linear": 250.0, "local": 80.0}, noisy={"local"})
    monkeypatch.setattr(rounds, "run_part", fake)
    monkeypatch.setattr(
        rounds, "timed_call", lambda cfg, point: TimedCall("x:y", {"name": point["attention"]["name"]}, 1, 9.0, False)
    )
    by_length = {
        n: rounds.Comparison(
            [
                rounds.Member(f"{name}{n}", {"probe": "speed", "seq_len": n, "attention": {"name": name}}, True)
                for name in names
            ]
        )
        for n, names in ((64, ["full", "linear"]), (128, ["full", "local"]))
    }
    started, offered = [], []
    rounds.measure_in_rounds(
        OmegaConf.create({}),
        list(by_length.values()),
        TimingSettings(2, 4, 0.1),
        on_round=lambda index, comparison, points: started.append((index, comparison.members[0].point["seq_len"])),
        on_results=lambda comparison, final: offered.append((comparison.rounds_run, final)),
    )
    # both lengths' first two rounds alternate; only the noisy length gets the extra rounds
    assert started == [(1, 64), (1, 128), (2, 64), (2, 128), (3, 128), (4, 128)]
    assert offered == [(1, False), (1, False), (2, True), (2, False), (3, False), (4, True)]
    assert by_length[128].results(TimingSettings(2, 4, 0.1))["local128"]["unstable"]


@pytest.mark.parametrize(
    ("timing", "message"),
    [
        ({"rounds": 0}, r"sweep\.timing\.rounds=0 is out of range"),
        ({"rounds": 4, "max_rounds": 3}, r"sweep\.timing\.max_rounds=3 is out of range; allowed: \[4, inf\]"),
        ({"max_spread": 0}, r"sweep\.timing\.max_spread=0 is out of range"),
        ({"round": 3}, r"sweep\.timing: unknown key\(s\) \['round'\]"),
    ],
)
def test_bad_timing_settings_are_one_line(timing, message):
    with pytest.raises(ConfigError, match=message):
        timing_settings(OmegaConf.create({"sweep": {"timing": timing}}))


def test_alternating_timing_rotates_the_order_and_times_each_side_at_least_min_time():
    order = []

    def sleeper(name: str, seconds: float):
        return lambda: order.append(name) or time.sleep(seconds)

    fast, slow = sleeper("fast", 0.001), sleeper("slow", 0.004)
    mine, theirs = time_alternating([fast, slow], device=torch.device("cpu"), warmup=1, repeats=3, min_time_s=0.03)
    assert order[:2] == ["fast", "slow"]  # warm-up, then cycles with the order rotating
    assert order[2:6] == ["fast", "slow", "slow", "fast"]
    assert len(mine) == len(theirs) >= 3 and sum(mine) >= 0.03  # the faster side sets how many cycles
    assert statistics.median(t / m for m, t in zip(mine, theirs, strict=True)) > 1.5


def test_a_fast_call_is_timed_until_min_time_and_a_slow_one_stops_at_repeats():
    fast = time_calls(lambda: time.sleep(0.001), device=torch.device("cpu"), warmup=0, repeats=3, min_time_s=0.03)
    assert fast.repeats >= 15
    slow = time_calls(lambda: time.sleep(0.02), device=torch.device("cpu"), warmup=0, repeats=3, min_time_s=0.03)
    assert slow.repeats == 3
