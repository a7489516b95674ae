"""The report's opening answer: the Pareto front of (accuracy, speed, memory) with ties, and the three picks."""

from __future__ import annotations

import pandas as pd
from helpers import accuracy_records, speed_record

from runners.reporting import choice
from runners.reporting.tables import flat_results

speed, accuracy = speed_record, accuracy_records


# (accuracy over two seeds, training tok/s, peak MiB) at n = 384
SETTING = {
    "full": ((0.98, 1.00), 100.0, 50.0),
    "linear": ((0.97, 0.99), 200.0, 40.0),  # tied with full on accuracy, faster and leaner: dominates it
    "local": ((0.45, 0.55), 300.0, 30.0),  # fastest and leanest, but did not learn the task
    "performer": ((0.88, 0.92), 150.0, 60.0),  # worse than linear on every axis
    "hedgehog": ((1.00, 1.00), 50.0, 100.0),  # clearly more accurate than linear; tied with full (max 1.00)
}


def frame_of(setting=SETTING, *, with_longer=True):
    records = []
    for variant, (accs, tok, mib) in setting.items():
        records += [speed(variant, 384, tok, mib), *accuracy(variant, accs)]
        if with_longer:
            records.append(speed(variant, 1024, tok / 2, 2 * mib))
    return flat_results(records)


def rows_at_384(frame):
    part = frame[frame.status != "unsupported"]
    speed_rows, stats = choice.speed_rows(part), choice.accuracy_settings(part)
    return choice.candidates(speed_rows[speed_rows.seq_len == 384], stats[stats.seq_len == 384])


def test_pareto_front_keeps_every_variant_no_other_beats_on_mean_accuracy_speed_and_memory():
    rows = rows_at_384(frame_of())
    front = choice.pareto(rows, with_accuracy=True)
    assert front == ["full", "local", "hedgehog", "linear"]  # report order; performer: linear beats it on all three
    assert set(choice.pareto(rows, with_accuracy=False)) == {"local"}  # speed and memory alone: local wins both


def test_picks_name_accuracy_ties_and_leave_out_variants_that_did_not_learn():
    chosen = choice.picks(rows_at_384(frame_of()))
    assert chosen["ties"] == ["hedgehog", "full"]  # full's best seed reaches hedgehog's worst
    assert chosen["accuracy"] == "full"  # the fastest of the tied
    assert chosen["speed"] == "linear" and chosen["memory"] == "linear"  # local is 0.5 below the best


def test_section_pairs_accuracy_and_speed_only_at_the_same_length_and_says_where_accuracy_is_missing():
    frame = frame_of()
    frame = pd.concat([frame, flat_results(accuracy("full", (0.9, 0.95), direction="causal"))])
    text = "\n".join(choice.choice_section(frame))
    assert text.startswith("## Which attention for you")
    at_384 = text.split("**n = 384, bidirectional, lookup**")[1].split("**n = ")[0]
    assert "- Speed first: `linear`, 200 train tok/s (2.00x `full`), 40.0 MiB peak (0.80x), accuracy 0.980" in at_384
    assert "tied within the seed spread: `hedgehog`, `full`" in at_384
    at_1024 = text.split("**n = 1,024, bidirectional**")[1]
    assert "no accuracy was measured at this length and direction" in at_1024
    assert "Speed first: `local`" in at_1024  # nothing to hold it back without accuracy
    causal = text.split("**n = 384, causal, lookup**")[1].split("**n = ")[0]
    assert "no speed points at this length and direction" in causal and "Accuracy first: `full`" in causal


def test_each_hardware_gets_its_own_speed_and_shares_the_accuracy_of_the_config():
    a = frame_of(with_longer=False)
    b = flat_results([speed("full", 384, 1000.0, 10.0, fp="gpu-B"), speed("linear", 384, 500.0, 20.0, fp="gpu-B")])
    text = "\n".join(choice.choice_section(pd.concat([a, b])))
    on_b = text.split("### On gpu-B")[1]
    # accuracy is a property of the config: cpu-A's runs at the same length serve gpu-B's speed points
    assert "**n = 384, bidirectional, lookup**" in on_b and "no accuracy was measured" not in on_b
    assert "Speed first: `full`, 1,000 train tok/s" in on_b  # gpu-B's own speed, not cpu-A's
    assert "200 train tok/s" not in on_b
    assert "(#speed-and-memory-1)" in on_b  # links to the second hardware's sections


def paired(record: dict, ratio: float, lo: float, hi: float) -> dict:
    """A speed record timed in rounds beside full: its paired training ratio and interval."""
    return record | {
        "train_tokens_per_s_ratio": ratio,
        "train_tokens_per_s_ratio_lo": lo,
        "train_tokens_per_s_ratio_hi": hi,
    }


def test_a_speed_pick_whose_interval_reaches_the_runner_up_names_no_clear_winner():
    records = [
        paired(speed("full", 1024, 100.0, 50.0), 1.0, 1.0, 1.0),
        paired(speed("linear", 1024, 210.0, 40.0), 2.1, 1.9, 2.3),
        paired(speed("local", 1024, 200.0, 45.0), 2.0, 1.8, 2.2),  # its interval reaches linear's
        paired(speed("performer", 1024, 120.0, 30.0), 1.2, 1.1, 1.3),
    ]
    text = "\n".join(choice.choice_section(flat_results(records)))
    assert "Speed first: `linear`, 210 train tok/s (2.10x `full`, 1.90-2.30)" in text
    assert "no clear winner: the timing interval reaches `local`" in text and "reaches `local`, `performer`" not in text
    apart = [
        paired(speed("full", 1024, 100.0, 50.0), 1.0, 1.0, 1.0),
        paired(speed("linear", 1024, 210.0, 40.0), 2.1, 2.0, 2.2),
    ]
    assert "no clear winner" not in "\n".join(choice.choice_section(flat_results(apart)))


def test_speed_picks_rank_by_the_paired_ratio_where_every_variant_has_one():
    """Own processes read linear ahead (120 vs 100 tok/s); timed step by step beside full it is 0.77x: full wins."""
    records = [
        speed("full", 256, 100.0, 50.0) | {"train_tokens_per_s_ratio": 1.0},
        speed("linear", 256, 120.0, 60.0) | {"train_tokens_per_s_ratio": 0.77},
    ]
    part = flat_results(records)
    rows = choice.candidates(choice.speed_rows(part), None)
    assert choice.picks(rows)["speed"] == "full"
    assert choice.pareto(rows, with_accuracy=False) == ["full"]  # faster by the pairing and leaner
    unpaired = choice.candidates(
        choice.speed_rows(flat_results([speed("full", 256, 100.0, 50.0), speed("linear", 256, 120.0, 60.0)])), None
    )
    assert choice.picks(unpaired)["speed"] == "linear"  # no pairing recorded: the medians are all there is


def test_a_memory_pick_within_two_percent_of_others_names_them_and_a_clear_one_stands_alone():
    records = [
        speed("full", 2048, 100.0, 82.5),
        speed("cosformer", 2048, 300.0, 82.3),  # leanest by 0.2 MiB: not a choice that matters
        speed("local", 2048, 250.0, 83.9),  # within 2% of cosformer's
        speed("linformer", 2048, 290.0, 120.0),
    ]
    text = "\n".join(choice.choice_section(flat_results(records)))
    assert "Memory first: `cosformer`" in text
    assert (
        "no clear winner: within 2% of its peak: `full`, `local`" in text
        and "`linformer`" not in text.split("Memory first")[1].split("\n")[0]
    )
    lean = [speed("full", 2048, 100.0, 82.5), speed("local", 2048, 250.0, 70.0)]
    text = "\n".join(choice.choice_section(flat_results(lean)))
    assert "Memory first: `local`" in text and "within 2%" not in text
