"""Crossover lengths on synthetic measurements that follow known power laws."""

from __future__ import annotations

import pandas as pd
import pytest

from runners.reporting import crossover as cx
from runners.reporting import tables


def costs(lengths, law):
    return pd.Series({n: law(n) for n in lengths}, dtype=float)


QUADRATIC = lambda n: n * n * 1e-6  # noqa: E731  exact attention's step time
LINEAR = lambda n: 2e-3 * n  # noqa: E731  meets QUADRATIC at n = 2000


def test_a_crossover_between_two_measured_lengths_is_interpolated_exactly_for_power_laws():
    answer = cx.crossover(costs([512, 1024, 4096, 8192], LINEAR), costs([512, 1024, 4096, 8192], QUADRATIC))
    assert answer.kind == cx.INTERPOLATED and answer.lengths == (1024, 4096)
    assert answer.length == pytest.approx(2000, rel=1e-9)
    assert answer.exponent == pytest.approx(-1.0)
    assert answer.cell() == "~2,000 (between 1,024 and 4,096)"


def test_a_crossover_beyond_the_measured_lengths_is_extrapolated_and_says_from_which():
    answer = cx.crossover(costs([256, 512, 1024], LINEAR), costs([256, 512, 1024], QUADRATIC))
    assert answer.kind == cx.EXTRAPOLATED and answer.lengths == (256, 512, 1024)
    assert answer.length == pytest.approx(2000, rel=1e-9)
    assert "extrapolated from 256-1,024" in answer.cell()


def test_a_crossover_below_the_measured_lengths_is_extrapolated_downwards():
    answer = cx.crossover(costs([4096, 8192], LINEAR), costs([4096, 8192], QUADRATIC))
    assert answer.kind == cx.EXTRAPOLATED and answer.length == pytest.approx(2000, rel=1e-9)


def test_a_variant_that_grows_as_fast_or_faster_never_crosses():
    lengths = [256, 1024, 4096]
    steeper = cx.crossover(costs(lengths, lambda n: 1e-7 * n**2.5), costs(lengths, QUADRATIC))
    assert steeper.kind == cx.NEVER and steeper.length is None and steeper.exponent == pytest.approx(0.5)
    same = cx.crossover(costs(lengths, lambda n: 2e-6 * n * n), costs(lengths, QUADRATIC))
    assert same.kind == cx.NEVER and same.cell().startswith("never (not up to 4,096")


def test_better_at_every_length_with_a_ratio_that_does_not_fall_is_better_everywhere():
    lengths = [256, 1024]
    answer = cx.crossover(costs(lengths, lambda n: 0.5e-6 * n * n), costs(lengths, QUADRATIC))
    assert answer.kind == cx.BETTER_EVERYWHERE and answer.cell().startswith("<= 256")


def test_a_noisy_dip_inside_the_range_does_not_count_as_a_crossover():
    # better only at the middle length, worse at the longest, and rising there: never
    answer = cx.crossover(pd.Series({256: 2.0, 512: 0.5, 1024: 1.2}), pd.Series({256: 1.0, 512: 1.0, 1024: 1.0}))
    assert answer.kind == cx.NEVER
    # better from the middle length on: bracketed by the two lengths around the switch
    answer = cx.crossover(pd.Series({256: 2.0, 512: 0.5, 1024: 0.4}), pd.Series({256: 1.0, 512: 1.0, 1024: 1.0}))
    assert answer.kind == cx.INTERPOLATED and answer.lengths == (256, 512)


def test_fewer_than_two_shared_lengths_give_no_answer():
    assert cx.crossover(pd.Series({512: 1.0, 1024: 2.0}), pd.Series({512: 2.0, 2048: 4.0})) is None


def speed_rows(variant, tokens_per_s, memory):
    return [
        {"variant": variant, "seq_len": n, "status": "ok", "train_tokens_per_s": tok, "infer_tokens_per_s": 3 * tok}
        | {"peak_memory_mib": memory[n]}
        for n, tok in tokens_per_s.items()
    ]


def test_crossover_table_compares_each_row_with_full_in_the_same_direction():
    lengths = [512, 1024, 4096]
    full = {n: 1.0 / QUADRATIC(n) for n in lengths}  # tokens/s: the inverse of a cost per token
    lean = {n: 1.0 / LINEAR(n) for n in lengths}
    frame = pd.DataFrame(
        speed_rows("full", full, {n: 1e-4 * n * n for n in lengths})
        + speed_rows("linear", lean, {n: 0.1 * n for n in lengths})  # memory meets full's at n = 1000
        + speed_rows("full (causal)", {n: 2 * v for n, v in full.items()}, {n: 1.0 for n in lengths})
        + speed_rows("linear (causal)", lean, {n: 2.0 for n in lengths})
    )
    table = cx.crossover_table(frame)
    assert list(table.index) == ["linear", "linear (causal)"]
    assert table.loc["linear", "faster training from n ="] == "~2,000 (between 1,024 and 4,096)"
    assert table.loc["linear", "leaner (peak memory) from n ="] == "~1,000 (between 512 and 1,024)"
    # causal: full (causal) is twice as fast, so linear (causal) catches it at n = 4000; memory: never leaner
    assert table.loc["linear (causal)", "faster training from n ="].startswith("~4,000 (between 1,024 and 4,096)")
    assert table.loc["linear (causal)", "leaner (peak memory) from n ="].startswith("never")


def test_a_crossover_on_a_length_whose_paired_interval_holds_one_says_it_is_uncertain():
    rows = []
    for variant, ratios in (("full", [(1.0, 1.0, 1.0)] * 2), ("linear", [(0.5, 0.45, 0.55), (1.05, 0.97, 1.12)])):
        for n, (ratio, lo, hi) in zip((1024, 2048), ratios, strict=True):
            rows.append(
                {
                    "variant": variant,
                    "seq_len": n,
                    "status": "ok",
                    "train_tokens_per_s": 100.0 * ratio,  # the quotient would say the same; the paired ratio decides
                    "train_tokens_per_s_ratio": ratio,
                    "train_tokens_per_s_ratio_lo": lo,
                    "train_tokens_per_s_ratio_hi": hi,
                }
            )
    frame = pd.DataFrame(rows)
    answer = cx.paired_crossover(
        frame[frame.variant == "linear"], frame[frame.variant == "full"], "train_tokens_per_s", False
    )
    assert answer.kind == "interpolated" and answer.uncertain == (2048,)
    assert "uncertain: at n=2,048 the timing interval holds 1 (a tie)" in answer.cell()


def test_a_memory_ratio_that_ends_within_two_percent_of_full_is_a_tie_not_an_extrapolated_crossover():
    ratio = pd.Series({384: 1.54, 1024: 1.10, 2048: 1.01, 4096: 0.997, 8192: 0.997})
    assert cx.crossover_of_ratio(ratio).kind == cx.INTERPOLATED  # without a band: 0.3% leaner read as a crossover
    answer = cx.crossover_of_ratio(ratio, tie=cx.MEMORY_TIE)
    assert answer.kind == cx.TIES and answer.lengths == (2048, 4096, 8192)
    assert answer.cell() == "ties (within 2% at 2,048-8,192)"
    leaner = cx.crossover_of_ratio(pd.Series({2048: 1.05, 4096: 0.9, 8192: 0.7}), tie=cx.MEMORY_TIE)
    assert leaner.kind == cx.INTERPOLATED and leaner.lengths == (2048, 4096)  # clearly leaner: a real crossover
    last_only = cx.crossover_of_ratio(pd.Series({1024: 1.2, 2048: 1.01}), tie=cx.MEMORY_TIE)
    assert last_only.cell() == "ties (within 2% at 2,048)"
    heavier = cx.crossover_of_ratio(pd.Series({2048: 1.10, 4096: 1.10, 8192: 1.10}), tie=cx.MEMORY_TIE)
    assert heavier.kind == cx.NEVER


def test_the_speed_table_ties_memory_but_never_timing():
    from helpers import speed_record

    records = [speed_record("full", n, 1000.0 / n, 10.0 * n) for n in (1024, 2048)]
    records += [speed_record("linear", n, 2000.0 / n, 10.0 * n * 0.999) for n in (1024, 2048)]
    table = cx.crossover_table(tables.flat_results(records))
    assert table.loc["linear", "leaner (peak memory) from n ="] == "ties (within 2% at 1,024-2,048)"
    assert table.loc["linear", "faster training from n ="].startswith("<= 1,024")
