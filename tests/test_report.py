"""Report from a small fixed set of records: numbers, failed points, two machines, valid PNGs."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from runners import report
from runners.reporting import accuracy as acc_tables
from runners.reporting import plots, tables
from runners.results import store

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def speed(variant, n, tok, mib, fp="cpu-A", status="ok", message=None):
    record = {
        "variant": variant,
        "probe": "speed",
        "seq_len": n,
        "status": status,
        "hardware": "cpu",
        "hardware_info": {"fingerprint": fp},
        "sweep_id": "s1",
    }
    if status == "ok":
        record |= {
            "train_tokens_per_s": tok,
            "infer_tokens_per_s": 3 * tok,
            "peak_memory_mib": mib,
            "flops_per_step": 1e9 * n,
            "params": 1000,
        }
    else:
        record["message"] = message
    return record


def accuracy(variant, acc, status="ok", message=None, fp="cpu-A", seed=0, lr=3e-3, val=None, tok=2000.0, n=128):
    record = {
        "variant": variant,
        "probe": "accuracy",
        "seq_len": n,
        "status": status,
        "task": "mqar",
        "direction": "causal",
        "seed": seed,
        "lr": lr,
        "hardware": "cpu",
        "hardware_info": {"fingerprint": fp},
        "sweep_id": "s1",
        "majority_baseline": 0.1,
        "params": 5000 if variant == "linformer" else 4000,
    }
    if status != "ok":
        return record | {"message": message}
    val = acc if val is None else val
    curve = [  # reaches half its final accuracy at step 50 and all of it at step 100, 1 s per 50 steps
        {"step": 50, "train_s": 1.0, "wall_s": 1.5, "val_acc": val / 2, "val_loss": 2.0},
        {"step": 100, "train_s": 2.0, "wall_s": 3.0, "val_acc": val, "val_loss": 1.0},
    ]
    return record | {
        "test_acc": acc,
        "val_acc": val,
        "steps": 100,
        "max_steps": 100,
        "world_size": 2,
        "train_tokens_per_s_total": tok,
        "train_tokens_per_s_per_device": tok / 2,
        "learning_curve": curve,
    }


RECORDS = [
    speed("full", 1024, 1000.0, 400.0),
    speed("full", 2048, 400.0, 1600.0),
    speed("local", 1024, 1500.0, 200.0),
    speed("local", 2048, 1500.0, 400.0),
    speed("linformer", 1024, 2000.0, 100.0),
    speed("linformer", 2048, 0, 0, status="oom", message="can't allocate"),
    speed("full", 1024, 5000.0, 300.0, fp="gpu-B"),
    speed("local", 1024, 9000.0, 150.0, fp="gpu-B"),
    accuracy("full", 0.95),
    accuracy("full", 0.93, seed=1),
    accuracy("local", 0.945, tok=3000.0),
    accuracy("local", 0.941, seed=1, tok=3000.0),
    accuracy("performer", 0.45),
    accuracy("performer", 0.6, seed=1),
    accuracy("linformer", None, "unsupported", "'linformer' cannot be causal"),
]


@pytest.fixture
def built(tmp_path):
    for i, record in enumerate(RECORDS):
        store.write_point(tmp_path / "store", record | {"key": f"k{i}"})
    path = report.main(["--results", str(tmp_path / "store"), "--out", str(tmp_path / "out")])
    return path, path.read_text()


def test_report_tables_hold_the_right_numbers(built):
    path, text = built
    assert "Built from **15 results** (1 failed, shown where they belong; 1 not scored, listed once)" in text
    assert "**Baselines**: `full`, measured at the same points" in text
    assert "## cpu-A" in text and "## gpu-B" in text
    frame = tables.flat_results(store.read_records(path.parent.parent / "store"))
    speed_a = frame[(frame.fingerprint == "cpu-A") & (frame.probe == "speed")]
    rel = tables.relative_table(speed_a, "train_tokens_per_s")
    assert rel.loc["local", 2048] == pytest.approx(3.75) and rel.loc["full", 1024] == 1.0
    mem = tables.relative_table(speed_a, "peak_memory_mib")
    assert mem.loc["local", 2048] == pytest.approx(0.25)
    assert "| local | 1.50 | 3.75 |" in text


def test_training_runs_show_throughput_per_device_and_total(built):
    _, text = built
    assert "| full | 2,000 (1,000 x 2), 100 steps |" in text
    assert "| local | 3,000 (1,500 x 2), 100 steps |" in text


def test_failed_points_are_shown_not_dropped_and_what_a_variant_cannot_do_is_one_table(built):
    _, text = built
    assert "OOM" in text
    assert "n/a: causal unsupported" not in text  # no row of n/a cells for what the variant cannot do
    block = text[text.index("**Not scored**") :].split("\n\n")
    assert (
        block[0]
        == "**Not scored**: what a variant cannot do, at the lengths asked (the records stay in `results.csv`)."
    )
    assert block[1].splitlines() == ["| variant | accuracy mqar causal |", "|---|---|", "| linformer | n=128 |"]
    assert block[2] == "Why: *accuracy mqar causal*: the variant cannot be causal."


def test_the_report_opens_with_its_contents_and_folds_the_long_tables(built):
    _, text = built
    lines = text.splitlines()
    assert lines[0] == "# attnbench comparison report" and lines[2].startswith("**Contents**: ")
    contents = lines[2]
    assert "[Which attention for you](#which-attention-for-you)" in contents
    assert "[cpu-A](#cpu-a): [Speed and memory](#speed-and-memory)" in contents
    assert "[gpu-B](#gpu-b): [Speed and memory](#speed-and-memory-1)" in contents  # GitHub's anchor of a repeat
    assert text.index("## Which attention for you") < text.index("<details>")  # the answer is not folded
    absolute = text.index("<summary><b>Absolute numbers</b>")
    assert text.index("#### Crossover lengths") < absolute < text.index("</details>", absolute)
    assert text.count("<details>") == text.count("</details>")


def test_speed_summary_picks_fastest_and_leanest(built):
    path, _ = built
    frame = tables.flat_results(store.read_records(path.parent.parent / "store"))
    a = frame[frame.fingerprint == "cpu-A"]
    table = tables.speed_summary(a[a.probe == "speed"])
    assert table.loc[1024, "fastest (train tok/s)"].startswith("linformer")
    assert table.loc[2048, "fastest (train tok/s)"].startswith("local")
    assert table.loc[2048, "leanest (peak MiB)"].startswith("local")


def accuracy_frame(records):
    frame = tables.flat_results(records)
    return frame[(frame.probe == "accuracy") & (frame.fingerprint == "cpu-A")]


def test_accuracy_is_a_mean_over_seeds_with_its_spread_and_parameters(built):
    _, text = built
    stats = acc_tables.accuracy_stats(accuracy_frame(RECORDS)).set_index("variant")
    assert stats.loc["full", "mean"] == pytest.approx(0.94) and stats.loc["full", "seeds"] == 2
    assert (stats.loc["full", "min"], stats.loc["full", "max"]) == (0.93, 0.95)
    assert "| full | 4,000 | 100 | 0.003 | 0.940 (0.930-0.950, 2 seeds) |" in text
    assert "| linformer |" not in text.split("**mqar, causal**")[1].split("####")[0]  # not scored there


def test_variants_inside_the_best_ones_spread_are_a_tie_never_a_winner(built):
    _, text = built
    stats = acc_tables.accuracy_stats(accuracy_frame(RECORDS))
    assert acc_tables.tied_best(stats) == ["local", "full"]  # 0.943 best; full's max 0.95 reaches local's min 0.941
    summary = acc_tables.summary(stats)
    cell = summary.loc[("mqar", "causal", 128), "most accurate (ties within seed spread)"]
    assert cell == "local, full (tie): 0.943"
    assert summary.loc[("mqar", "causal", 128), "fastest training among them (tok/s)"] == "local (3,000)"
    assert "local, full (tie): 0.943" in text
    apart = accuracy_frame([accuracy("full", 0.95), accuracy("full", 0.94, seed=1), *RECORDS[-3:-1]])
    assert acc_tables.tied_best(acc_tables.accuracy_stats(apart)) == ["full"]


def test_a_setting_where_the_reference_did_not_learn_is_flagged(built):
    _, text = built  # full: 0.95 and 0.93, a mean of 0.94 below the bar of 0.95
    assert (
        "**The reference did not learn this setting; its ranking is not informative** (bar: mean >= 0.95 with a "
        "seed spread <= 0.05; raise `optim.max_steps` or shrink the task): mqar causal n=128: `full` 0.940 "
        "(0.930-0.950, 2 seeds)." in text
    )

    def flagged(*runs):
        records = [accuracy("full", acc, seed=seed) for seed, acc in enumerate(runs)]
        return acc_tables.unlearned_settings(acc_tables.accuracy_stats(accuracy_frame(records)), "full")

    assert flagged(0.99, 0.97).empty and flagged(0.95, 1.0).empty
    assert len(flagged(1.0, 0.94)) == 1  # a mean of 0.97, but a spread of 0.06 over seeds
    assert len(flagged(0.9, 0.92)) == 1
    failed = [accuracy("full", None, "diverged", "NaN loss"), accuracy("local", 0.99)]
    bad = acc_tables.unlearned_settings(acc_tables.accuracy_stats(accuracy_frame(failed)), "full")
    assert list(bad.status) == ["diverged"]
    assert "`full` diverged" in acc_tables.unlearned_line(acc_tables.accuracy_stats(accuracy_frame(failed)), "full")
    no_reference = accuracy_frame([accuracy("local", 0.5)])  # a sweep with sweep.baselines=[]: nothing to judge
    assert acc_tables.unlearned_line(acc_tables.accuracy_stats(no_reference), "full") == ""


def test_a_learning_rate_grid_reports_test_accuracy_at_the_rate_best_on_validation():
    records = [
        accuracy("full", 0.99, lr=1e-3, val=0.70),  # best test accuracy, but chosen by validation it loses
        accuracy("full", 0.80, lr=3e-3, val=0.90),
        accuracy("local", 0.50, lr=1e-3, val=0.50),
        accuracy("local", 0.60, lr=3e-3, val=0.40),
    ]
    chosen = acc_tables.at_chosen_lr(accuracy_frame(records))
    assert sorted(zip(chosen.variant, chosen.lr, chosen.test_acc, strict=True)) == [
        ("full", 3e-3, 0.80),
        ("local", 1e-3, 0.50),
    ]


def test_time_to_accuracy_uses_the_learning_curves(built):
    _, text = built
    table = acc_tables.time_to_accuracy(accuracy_frame(RECORDS))
    best = 0.943  # local's mean final validation accuracy
    half, ninety = "to 50% of best", "to 90% of best"
    assert table.loc[("mqar", "causal", 128, "full"), "targets"] == f"{0.5 * best:.3f}, {0.9 * best:.3f}"
    assert table.loc[("mqar", "causal", 128, "full"), half] == "75 steps, 1.5 s"  # seed 1 only at step 100
    assert table.loc[("mqar", "causal", 128, "full"), ninety] == "100 steps, 2.0 s"
    assert table.loc[("mqar", "causal", 128, "performer"), ninety] == "not reached"
    assert table.loc[("mqar", "causal", 128, "performer"), half] == "100 steps, 2.0 s (1/2 seeds)"
    assert "#### Time to accuracy" in text


def test_cross_hardware_table_and_scaling_exponent(built):
    _, text = built
    assert "## Across hardware" in text and "9,000" in text
    assert tables.scaling_exponent(pd.Series([1024, 2048]), pd.Series([400.0, 1600.0])) == pytest.approx(2.0)


def test_memory_plot_legend_carries_each_variants_fitted_exponent():
    import matplotlib.pyplot as plt

    frame = tables.flat_results(RECORDS)
    ok = frame[(frame.fingerprint == "cpu-A") & (frame.probe == "speed") & (frame.status == "ok")]
    fig, ax = plt.subplots()
    plots.draw_lines(ax, ok, "peak_memory_mib", with_exponent=True)
    labels = ax.get_legend_handles_labels()[1]
    plt.close(fig)
    assert labels == ["full (n^2.00)", "local (n^1.00)", "linformer"]  # full first, then family by family


def test_every_plot_is_a_valid_png_and_csv_is_written(built):
    path, text = built
    pngs = sorted(path.parent.glob("*.png"))
    assert len(pngs) == 2 * 2 + 2 + 2  # speed: 2 per fingerprint; accuracy (cpu-A): 2 + 2 learning curves
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 1000
        assert f"]({png.name})" in text
    csv = pd.read_csv(path.parent / "results.csv")
    assert len(csv) == 15 and "learning_curve" in csv.columns and "heatmaps" not in csv.columns


def test_a_report_rebuilt_from_its_results_csv_keeps_the_learning_curves(built, tmp_path):
    """The nested lists the report reads (learning curves, maps errors and budget curves) are JSON text in
    results.csv, so a committed report can be rebuilt from it alone with its time to accuracy and curves."""
    path, text = built
    frame = tables.flat_results(store.read_records(path.parent.parent / "store"))
    loaded = tables.load_results(path.parent / "results.csv")
    curves = sorted(str(c if isinstance(c, list) else []) for c in frame[frame.probe == "accuracy"].learning_curve)
    assert sorted(map(str, loaded[loaded.probe == "accuracy"].learning_curve)) == curves and any(curves)
    rebuilt = report.main(["--results", str(path.parent / "results.csv"), "--out", str(tmp_path / "again")])
    section = text[text.index("#### Time to accuracy") :].split("<details>")[0]
    assert "steps" in section and section in rebuilt.read_text()


def test_filters_select_rows(tmp_path):
    for i, record in enumerate(RECORDS):
        store.write_point(tmp_path / "store", record | {"key": f"k{i}"})
    path = report.main(["--results", str(tmp_path / "store"), "--out", str(tmp_path / "o"), "fingerprint=gpu-B"])
    assert "cpu-A" not in path.read_text() and "gpu-B" in path.read_text()
    with pytest.raises(SystemExit, match="bad filter"):
        report.main(["--results", str(tmp_path / "store"), "--out", str(tmp_path / "o"), "nosuch=1"])


def test_pareto_front():
    points = pd.DataFrame({"x": [1, 2, 3, 4], "y": [0.9, 0.95, 0.5, 0.6]})
    assert sorted(tables.pareto_front(points, "x", "y").x) == [2, 4]


def test_report_from_only_failed_points(tmp_path):
    store.write_point(tmp_path / "store", RECORDS[-1] | {"key": "only"})
    text = report.main(["--results", str(tmp_path / "store"), "--out", str(tmp_path / "o")]).read_text()
    assert "Built from **1 results** (0 failed, shown where they belong; 1 not scored" in text
    assert "| linformer | n=128 |" in text and "*accuracy mqar causal*: the variant cannot be causal" in text


def test_scaling_table_fits_memory_and_step_time_exponents(built):
    path, text = built
    frame = tables.flat_results(store.read_records(path.parent.parent / "store"))
    a = frame[(frame.fingerprint == "cpu-A") & (frame.probe == "speed")]
    table = tables.scaling_table(a)
    assert table.loc["full", "peak memory"] == pytest.approx(2.0)
    assert table.loc["local", "peak memory"] == pytest.approx(1.0)
    assert table.loc["full", "train step time"] == pytest.approx(math.log2(5))  # 2x tokens at 0.4x the rate
    assert table.loc["local", "train step time"] == pytest.approx(1.0)
    assert "linformer" not in table.index  # one ok length: no fit
    assert "<b>Scaling with sequence length</b>" in text and "| full | 1024-2048 | 2.00 |" in text


def test_causal_speed_points_get_their_own_rows_relative_to_causal_full():
    causal = [r | {"config": {"causal": True}} for r in RECORDS[:4]]  # full and local, causal, cpu-A
    frame = tables.flat_results(RECORDS[:4] + [c | {"train_tokens_per_s": 2 * c["train_tokens_per_s"]} for c in causal])
    speed_a = frame[frame.probe == "speed"]
    assert {"full", "local", "full (causal)", "local (causal)"} == set(speed_a.variant)
    rel = tables.relative_table(speed_a, "train_tokens_per_s")
    assert rel.loc["full (causal)", 1024] == 1.0 and rel.loc["local (causal)", 2048] == pytest.approx(3.75)
    assert rel.loc["local", 2048] == pytest.approx(3.75)


def test_filters_ignore_case(tmp_path):
    for i, record in enumerate(RECORDS):
        store.write_point(tmp_path / "store", record | {"key": f"k{i}"})
    text = report.main(["--results", str(tmp_path / "store"), "--out", str(tmp_path / "o"), "task=MQAR"]).read_text()
    assert "**mqar, causal**" in text
    with pytest.raises(SystemExit, match="values in the results: mqar"):  # a typo is not an empty report
        report.main(["--results", str(tmp_path / "store"), "--out", str(tmp_path / "o"), "task=mqra"])


def recall_record(variant, knob, state_bytes, pairs, acc, *, seed=0, lr=3e-3, val=None):
    record = accuracy(variant, acc, seed=seed, lr=lr, val=val, n=64)
    return record | {
        "key": f"{variant}-{knob}-{pairs}-{seed}-{lr}",
        "task": "lookup",
        "state_bytes": state_bytes,
        "config": {"state_knob": knob, "task": {"num_pairs": pairs}},
    }


def test_recall_section_puts_accuracy_beside_state_bytes_per_number_of_pairs_with_the_front(tmp_path, capsys):
    records = [
        *(
            recall_record("full", f"dim={d}", 2048 * d, p, 1.0, seed=s)
            for d in (16, 32)
            for p in (4, 8)
            for s in (0, 1)
        ),
        *(recall_record("linear", "dim=16", 256, 4, a, seed=s) for s, a in ((0, 0.9), (1, 0.92))),
        *(recall_record("linear", "dim=32", 1024, 4, a, seed=s) for s, a in ((0, 0.96), (1, 0.98))),
        *(recall_record("linear", "dim=16", 256, 8, a, seed=s) for s, a in ((0, 0.4), (1, 0.5))),
        # two rates at dim=32, 8 pairs: 1e-2 is better on validation, so its test accuracy is reported
        *(recall_record("linear", "dim=32", 1024, 8, 0.6, seed=s, lr=3e-3, val=0.6) for s in (0, 1)),
        *(recall_record("linear", "dim=32", 1024, 8, 0.7, seed=s, lr=1e-2, val=0.75) for s in (0, 1)),
        accuracy("full", 0.99, n=128),  # a plain accuracy run: its own section, untouched by the recall runs
        accuracy("full", 0.98, seed=1, n=128),
    ]
    for i, record in enumerate(records):
        store.write_point(tmp_path / "store", record | {"key": record.get("key", f"plain{i}")})
    text = report.main(["--results", str(tmp_path / "store"), "--out", str(tmp_path / "out")]).read_text()
    section = text.split("### Recall against state size")[1]
    assert "**lookup, causal, n=64**" in section
    rows = {
        line.split("|")[1].strip() + " " + line.split("|")[2].strip(): line
        for line in section.splitlines()
        if line.startswith("| full") or line.startswith("| linear")
    }
    assert (
        rows["linear dim=16"]
        == "| linear | dim=16 | 0.2 | 0.910 (0.900-0.920), lr 0.003 * | 0.450 (0.400-0.500), lr 0.003 * |"
    )
    assert (
        rows["linear dim=32"]
        == "| linear | dim=32 | 1.0 | 0.970 (0.960-0.980), lr 0.003 * | 0.700 (0.700-0.700), lr 0.01 * |"
    )
    assert rows["full dim=16"].endswith("| 32.0 | 1.000 (1.000-1.000), lr 0.003 * | 1.000 (1.000-1.000), lr 0.003 * |")
    assert rows["full dim=32"].endswith("| 64.0 | 1.000 (1.000-1.000), lr 0.003 | 1.000 (1.000-1.000), lr 0.003 |")
    plots = sorted(path.name for path in (tmp_path / "out").glob("recall_*.png"))
    assert plots == ["recall_lookup_causal_64_4pairs_hw0.png", "recall_lookup_causal_64_8pairs_hw0.png"]
    plain = text.split("### Accuracy")[1].split("### Recall")[0]
    assert "| full | 4,000 | 100 | 0.003 | 0.985 (0.980-0.990, 2 seeds) |" in plain
    assert "n=64" not in plain  # the recall runs stay out of the plain accuracy tables
    assert "did not learn the task at every size" not in section  # full: 1.000 at every size
    records[0] = recall_record("full", "dim=16", 2048 * 16, 4, 0.5)  # now one seed of full fails to learn there
    store.write_point(tmp_path / "store", records[0])
    text = report.main(["--results", str(tmp_path / "store"), "--out", str(tmp_path / "out")]).read_text()
    assert "**`full` did not learn the task at every size** (bar: mean >= 0.95, seed spread <= 0.05)" in text
    assert "dim=16, 4 pairs: 0.750 (0.500-1.000)." in text
    from runners.sweeping.run import warn_unlearned

    warn_unlearned(tables.flat_results(store.read_records(tmp_path / "store")))  # the sweep says it when it ends
    assert "warning: `full` did not learn the task at every size" in capsys.readouterr().err


def test_one_report_from_a_committed_table_and_a_store(built, tmp_path):
    """A committed results.csv and a new store (another probe measured later) make one report."""
    path, _ = built
    store.write_point(tmp_path / "later", speed("full", 4096, 100.0, 6400.0) | {"key": "later"})
    merged = report.main(
        ["--results", str(path.parent / "results.csv"), str(tmp_path / "later"), "--out", str(tmp_path / "m")]
    )
    assert "Built from **16 results**" in merged.read_text()


def test_the_flop_bound_says_whether_a_slower_variant_is_held_back_by_its_flops_or_its_kernel(tmp_path):
    """full: 1 s per step. `heavy` does 3x full's FLOPs at the 100 GFLOP/s peak: it needs 150% of the peak to tie
    (impossible). `slow` does half full's FLOPs but reaches 10% of the peak: it needs 25%; its kernel falls short."""
    peak = {"matmul_gflops": {"fp32": 100.0}}

    def point(variant, flops, seconds):
        record = speed(variant, 1000, 1000 / seconds, 10.0) | {"flops_per_step": flops}
        return record | {"hardware_info": {"fingerprint": "cpu-A", **peak}, "precision": "32-true"}

    records = [point("full", 50e9, 1.0), point("heavy", 150e9, 2.0), point("slow", 25e9, 2.5)]
    for i, record in enumerate(records):
        store.write_point(tmp_path / "store", record | {"key": f"k{i}"})
    frame = tables.flat_results(store.read_records(tmp_path / "store"))
    bound = tables.flop_bound(frame[frame.probe == "speed"]).set_index("variant")
    assert bound.loc["heavy", "needed_pct"] == pytest.approx(150.0)
    assert bound.loc["heavy", "achieved_pct"] == pytest.approx(75.0)
    assert bound.loc["slow", "needed_pct"] == pytest.approx(25.0) and bound.loc["slow", "ratio"] == pytest.approx(0.4)
    text = report.main(["--results", str(tmp_path / "store"), "--out", str(tmp_path / "r")]).read_text()
    assert "- `heavy` n=1,000: 0.50x `full`; needs 150% of the peak to tie, reaches 75%: it cannot tie" in text
    assert "- `slow` n=1,000: 0.40x `full`; needs 25% of the peak to tie, reaches 10%: its FLOPs allow it" in text


def test_the_report_says_what_peak_memory_counts_and_warns_when_a_store_mixes_methods():
    from runners.measure.memory import LIVE_TENSORS
    from runners.reporting.markdown import memory_method_sentence

    live = [r | {"memory_method": LIVE_TENSORS} for r in RECORDS if r["probe"] == "speed"]
    older = [r for r in RECORDS if r["probe"] == "speed"]  # written before the field existed: the resident set
    for records, expected in ((live, "live tensor bytes"), (older, "resident set")):
        sentence = memory_method_sentence(tables.flat_results(records))
        assert sentence.startswith("Peak memory is") and expected in sentence and "mix" not in sentence
    mixed = memory_method_sentence(tables.flat_results(live[:2] + older[2:]))
    assert "mix two ways of measuring memory" in mixed and "fresh `results_dir`" in mixed
