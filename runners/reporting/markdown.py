"""The report itself: ``report.md`` (readable on GitHub) with its tables and plots, and ``results.csv``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from runners.measure.matmul_peak import describe_peak
from runners.measure.memory import LIVE_TENSORS, RESIDENT_SET
from runners.reporting import accuracy as acc_tables
from runners.reporting.approximation import approximation_section
from runners.reporting.choice import anchor, choice_section
from runners.reporting.cross import CROSS_PROBES, cross_answer, cross_section
from runners.reporting.crossover import crossover_table
from runners.reporting.generation import generation_section
from runners.reporting.md import folded, md_table
from runners.reporting.plots import accuracy_plots, speed_plots
from runners.reporting.recall import recall_runs, recall_section
from runners.reporting.styles import CAUSAL, REFERENCE, variant_order
from runners.reporting.tables import (
    achieved_gflops,
    by_variant,
    cell_table,
    flop_bound,
    interval_cells,
    relative_table,
    scaling_table,
    speed_summary,
    to_csv,
    training_run_cells,
)
from runners.reporting.text import text_runs, text_section

PAIRED = (
    "Each ratio is the median of per-round ratios: every point of a length is timed once per round, in its own "
    "process, beside `full` in the same process, and each round goes over every length before the next begins "
    "(`sweep.timing`), so the machine's drift over the run hits both sides of a ratio; "
    "in brackets the distribution-free interval of that median over the rounds (coverage in `results.csv`, "
    "`interval_coverage`: 75% for 3 rounds, 94% for 5). `unstable`: still wider than `sweep.timing.max_spread` "
    "after `max_rounds`."
)
MEMORY_METHODS = {
    LIVE_TENSORS: (
        "the model's state plus the live tensor bytes a training step holds at its peak (CUDA: the allocator's "
        "`max_memory_allocated`; CPU: the allocator's allocation and free events under torch.profiler, "
        "identical run to run; `step_resident_mib` in `results.csv` is the resident set's reading of the same "
        "step, allocator slack included)"
    ),
    RESIDENT_SET: (
        "the model's state plus the growth of the process's resident set over a training step (CPU records "
        "written before live tensors were counted: allocator slack included, a few percent between processes)"
    ),
}


def memory_method_sentence(speed: pd.DataFrame) -> str:
    """What the peak-memory figures of these points count; a warning where a store mixes methods."""
    methods = speed.get("memory_method", pd.Series(index=speed.index, dtype=object)).astype(object).fillna(RESIDENT_SET)
    present = [method for method in MEMORY_METHODS if (methods == method).any()]
    if len(present) == 1:
        return f"Peak memory is {MEMORY_METHODS[present[0]]}."
    counts = methods.value_counts()
    return (
        f"**These points mix two ways of measuring memory**: {counts.get(LIVE_TENSORS, 0)} count "
        f"{MEMORY_METHODS[LIVE_TENSORS]}, {counts.get(RESIDENT_SET, 0)} count {MEMORY_METHODS[RESIDENT_SET]}; "
        "a ratio across them is not a like-for-like comparison: measure again into a fresh `results_dir`."
    )


NO_REFERENCE = (
    f"`{REFERENCE}` was not measured at these lengths and directions (it is planned beside any selection "
    "unless `sweep.baselines=[]`)"
)


def speed_section(speed: pd.DataFrame, out: Path, tag: str) -> list[str]:
    """Throughput, memory and FLOPs of the speed points: a measurement of this hardware."""
    lines = ["### Speed and memory", "", md_table(speed_summary(speed)), ""]
    lines += [
        "#### Relative to full (Long Range Arena form)",
        "",
        f"Training speed (tokens/s) relative to `{REFERENCE}` at the same length (causal rows: to "
        f"`{REFERENCE}{CAUSAL}`); above 1 is faster. {PAIRED}",
        "",
        md_table(interval_cells(speed, "train_tokens_per_s", ratio=True, fmt=".2f"), empty=NO_REFERENCE),
        f"Inference speed (tokens/s of a forward pass) relative to `{REFERENCE}`, the same way:",
        "",
        md_table(interval_cells(speed, "infer_tokens_per_s", ratio=True, fmt=".2f"), empty=NO_REFERENCE),
        f"Peak memory relative to `{REFERENCE}` at the same length (causal rows: to `{REFERENCE}{CAUSAL}`); "
        f"below 1 is leaner. {memory_method_sentence(speed)}",
        "",
        md_table(relative_table(speed, "peak_memory_mib"), empty=NO_REFERENCE),
        "#### Crossover lengths: from which n a variant beats full",
        "",
        f"The length from which the variant is faster (time per token of a training step, of an inference "
        f"step) or leaner (peak memory of a training step) than `{REFERENCE}` at every longer measured length "
        "too (CAB's efficiency length): interpolated in log-log between the two measured lengths around the "
        "switch, or extrapolated from the fitted growth of the ratio and marked so with the lengths fitted; "
        "`never` where the ratio does not fall with n. Cores alone: `python -m runners.bench` prints the same.",
        "",
        md_table(crossover_table(speed), empty=f"no variant shares two or more lengths with `{REFERENCE}`"),
    ]
    lines += flop_bound_lines(speed)
    lines += folded(
        "<b>Scaling with sequence length</b>: the fitted exponent of each variant's time and memory",
        [
            "Fitted exponent p of n^p (1 = linear, 2 = quadratic) over the measured lengths. Peak memory "
            "includes the model state, which does not grow with n, so it bends below the step's own growth "
            "at short lengths; `python -m runners.bench` measures the attention cores alone.",
            "",
            md_table(scaling_table(speed), empty="no variant was measured at two or more lengths"),
        ],
    )
    absolute = []
    for title, value, fmt in [
        ("Training throughput, tokens/s", "train_tokens_per_s", ",.0f"),
        ("Inference throughput, tokens/s", "infer_tokens_per_s", ",.0f"),
        ("Peak memory of a training step, MiB", "peak_memory_mib", ",.1f"),
        ("FLOPs per training step", "flops_per_step", ".3g"),
    ]:
        absolute += [f"**{title}**", "", md_table(cell_table(speed, value, fmt)), ""]
    efficiency = achieved_gflops(speed)
    if efficiency.pct_of_peak.notna().any():
        latest = efficiency.iloc[-1]
        peaks = describe_peak(
            {
                dtype: efficiency[f"matmul_{dtype}_gflops"].dropna().iloc[-1]
                for dtype in ("fp32", "bf16")
                if efficiency[f"matmul_{dtype}_gflops"].notna().any()
            },
            bf16_native=None if pd.isna(latest.bf16_native) else bool(latest.bf16_native),
            on_gpu=pd.notna(latest.gpu_name),
        )
        absolute += [
            "**Where the time goes: achieved matmul GFLOP/s of a training step, and % of this machine's "
            f"measured matmul peak** ({peaks}; counted "
            "FLOPs / step time, so softmax, feature maps and Python overhead show as a low share)",
            "",
            md_table(cell_table(efficiency, "train_gflops", ",.1f")),
            "",
            "% of the measured matmul peak:",
            "",
            md_table(cell_table(efficiency, "pct_of_peak", ".1f")),
            "",
        ]
    lines += folded(
        "<b>Absolute numbers</b>: tokens/s, peak MiB, FLOPs per step and achieved GFLOP/s at every length", absolute
    )
    return lines + [f"![{path.stem}]({path.name})\n" for path in speed_plots(speed, out, tag)]


def flop_bound_lines(speed: pd.DataFrame) -> list[str]:
    """Why a variant is slower than ``full``: its FLOPs or its kernel. For each variant slower than ``full`` at its
    longest measured length, the share of the measured matmul peak it would need to tie, and the share it reaches;
    the whole table folded below."""
    bound = flop_bound(speed)
    if bound.empty:
        return []
    longest = bound.loc[bound.groupby("variant").seq_len.idxmax()]
    slower = longest[longest.ratio < 1].sort_values("needed_pct", ascending=False)
    items = []
    for row in slower.itertuples():
        verdict = (
            "it cannot tie `full` here whatever its kernel: its FLOPs per step exceed what the peak does in "
            "`full`'s step time"
            if row.needed_pct > 100
            else "its FLOPs allow it: the kernel falls short of that share"
        )
        items.append(
            f"- `{row.variant}` n={row.seq_len:,}: {row.ratio:.2f}x `{REFERENCE}`; needs {row.needed_pct:.0f}% "
            f"of the peak to tie, reaches {row.achieved_pct:.0f}%: {verdict}."
        )
    table = bound.assign(
        cell=[f"{n:.0f}% ({a:.0f}%)" for n, a in zip(bound.needed_pct, bound.achieved_pct, strict=True)]
    ).pivot_table(index="variant", columns="seq_len", values="cell", aggfunc="last")
    return [
        f"#### The FLOP bound: can a variant beat `{REFERENCE}` here at all?",
        "",
        f"By its own FLOP count per training step (`torch.utils.flop_counter`, recomputation included) at this "
        f"machine's measured matmul peak, the share of the peak a variant's step would need to take as long as "
        f"`{REFERENCE}`'s measured step (above 100%: impossible on this machine), beside the share it reaches. "
        + (
            "The variants slower than `full` at their longest length:"
            if items
            else f"No variant is slower than `{REFERENCE}` at its longest measured length."
        ),
        "",
        *items,
        "",
        *folded(
            "<b>Needed (reached) share of the matmul peak</b> at every length",
            [md_table(by_variant(table))],
        ),
    ]


def side_by_side_note(accuracy: pd.DataFrame) -> str:
    """What the seconds of training runs mean when runs shared the machine (``sweep.accuracy_jobs``)."""
    shared = accuracy.concurrent_runs.max() if "concurrent_runs" in accuracy else math.nan
    if not shared > 1:
        return ""
    return (
        f" Runs went {shared:.0f} side by side, each with its share of the threads: their seconds compare "
        "with each other, not with a run that had the machine alone (the speed section has those)."
    )


def accuracy_section(accuracy: pd.DataFrame, out: Path, tag: str) -> list[str]:
    """Accuracy over seeds, ties, time to accuracy and learning curves: properties of the config and seeds."""
    runs = acc_tables.at_chosen_lr(accuracy)
    stats = acc_tables.accuracy_stats(runs)
    lr_note = " Each variant at its best learning rate by validation accuracy." if accuracy.lr.nunique() > 1 else ""
    targets = sorted(accuracy.target_acc.dropna().unique()) if "target_acc" in accuracy else []
    budget = (
        f"Every run trains for at most `max_steps` steps and stops at the first validation that reaches "
        f"{', '.join(f'{t:g}' for t in targets)} (`optim.target_acc`; `steps` shows where the seeds stopped)"
        if targets
        else "Test accuracy after the same number of training steps for every variant"
    )
    lines = [
        "### Accuracy",
        "",
        f"{budget}: a property of the config and the seeds, not of this machine's load. Mean over seeds with "
        f"the min-max spread; variants whose spread reaches the best one's are a tie.{lr_note}",
        "",
        md_table(acc_tables.summary(stats)),
        "",
    ]
    unlearned = acc_tables.unlearned_line(stats, REFERENCE)
    lines += [unlearned, ""] if unlearned else []
    per_setting = []
    for (task, direction), group in stats.groupby(["task", "direction"], sort=True):
        baseline = accuracy[(accuracy.task == task) & (accuracy.direction == direction)].majority_baseline.dropna()
        note = f"; majority-class baseline {baseline.iloc[0]:.3f}" if not baseline.empty else ""
        per_setting += [f"**{task}, {direction}**{note}", "", md_table(acc_tables.accuracy_table(group)), ""]
    lines += folded("<b>Per setting</b>: every variant's accuracy with its seeds and steps", per_setting)
    lines += [
        "#### Time to accuracy",
        "",
        "Optimizer steps and seconds spent in training steps (this hardware) until validation accuracy first "
        "reached 50% and 90% of the best mean final validation accuracy of the setting (`targets`)."
        + side_by_side_note(accuracy),
        "",
        md_table(
            acc_tables.time_to_accuracy(runs),
            empty="no learning curve in these results (a results.csv written before it kept them has none)",
        ),
    ]
    training = []
    for (task, direction), group in runs.groupby(["task", "direction"], sort=True):
        cells = cell_table(group.assign(run=training_run_cells(group)), "run", "s")
        training += [f"**{task}, {direction}** (one seed shown)", "", md_table(cells), ""]
    lines += folded("<b>Training runs</b>: tokens/s in total (per device x devices), optimizer steps", training)
    return lines + [f"![{path.stem}]({path.name})\n" for path in accuracy_plots(runs, stats, out, tag)]


def maps_lines(frame: pd.DataFrame, out: Path) -> list[str]:
    """The section on approximation error: one for all hardware, since its numbers are properties of the config."""
    maps = frame[frame.probe == "maps"]
    ok = maps[maps.status == "ok"].drop_duplicates(["variant", "seq_len"], keep="last")
    lines = approximation_section(ok, out, "all", heading="##") if not ok.empty else []
    failed = maps[maps.status != "ok"]
    if not failed.empty:
        lines += ["**Maps points that failed**", "", md_table(failed[["variant", "seq_len", "status", "message"]]), ""]
    return lines


def not_scored_lines(unsupported: pd.DataFrame) -> list[str]:
    """Points a variant cannot do (causal, decoding, ...): one table, variant x kind of point, with the lengths in
    its cells and each kind's reason once below, instead of rows of ``n/a`` in every other table."""
    if unsupported.empty:
        return []
    rows = unsupported.assign(
        causal_row=unsupported.variant.str.endswith(CAUSAL), variant=unsupported.variant.str.removesuffix(CAUSAL)
    )
    kinds, reasons, cells = [], {}, {}
    for _, row in rows.iterrows():
        parts = [row.probe, row.task, row.direction, "causal" if row.causal_row else None]
        kind = " ".join(str(x) for x in parts if isinstance(x, str))
        if kind not in kinds:
            kinds.append(kind)
        if kind not in reasons and isinstance(row.message, str):
            reason = row.message.removeprefix("UnsupportedError: ").split(";")[0]
            reasons[kind] = reason.replace(f"'{row.variant}'", "the variant").replace(row.variant, "the variant")
        lengths = cells.setdefault((row.variant, kind), set())
        if pd.notna(row.seq_len):
            lengths.add(int(row.seq_len))
    table = pd.DataFrame(
        [
            {"variant": variant}
            | {
                kind: "n=" + ", ".join(map(str, sorted(cells[variant, kind]))) if (variant, kind) in cells else ""
                for kind in kinds
            }
            for variant in variant_order(rows.variant)
        ]
    ).set_index("variant")
    why = "; ".join(f"*{kind}*: {reasons.get(kind, 'unsupported')}" for kind in kinds)
    return [
        "**Not scored**: what a variant cannot do, at the lengths asked (the records stay in `results.csv`).",
        "",
        md_table(table),
        f"Why: {why}.",
        "",
    ]


def build_report(frame: pd.DataFrame, out: Path, *, baselines: Sequence[str] = (REFERENCE,)) -> Path:
    """Write report.md, plots and results.csv for ``frame`` into ``out``; ``baselines`` are marked as such."""
    out.mkdir(parents=True, exist_ok=True)
    to_csv(frame, out / "results.csv")
    unsupported = frame.status == "unsupported"
    failed = int((frame.status != "ok").sum()) - int(unsupported.sum())
    measured = sorted(set(frame.variant.str.removesuffix(CAUSAL)))
    marked = [name for name in baselines if name in measured]
    lines = [
        "# attnbench comparison report",
        "",
        f"Built from **{len(frame)} results** ({failed} failed, shown where they belong; {int(unsupported.sum())} "
        f"not scored, listed once) on {frame.fingerprint.nunique()} hardware fingerprint(s). "
        "Flat table: `results.csv`.",
        "",
    ]
    if marked:
        lines += [
            f"**Baselines**: {', '.join(f'`{name}`' for name in marked)}, measured at the same points as the "
            f"variants compared with them (`sweep.baselines`); every relative table divides by `{REFERENCE}`, "
            "exact softmax attention.",
            "",
        ]
    lines += choice_section(frame)
    lines += cross_answer(frame)
    for index, (fingerprint, whole) in enumerate(frame.groupby("fingerprint", sort=True)):
        if whole.probe.isin([*CROSS_PROBES, "maps"]).all():
            continue  # the cross and maps sections have their own tables (maps: for every machine at once)
        lines += [f"## {fingerprint}", ""]
        lines += not_scored_lines(whole[(whole.status == "unsupported") & ~whole.probe.isin(CROSS_PROBES)])
        part = whole[whole.status != "unsupported"]
        speed = part[part.probe == "speed"]
        accuracy = part[part.probe == "accuracy"]
        if not speed.empty:
            lines += speed_section(speed, out, f"hw{index}")
        at_state_sizes = recall_runs(accuracy)
        accuracy = accuracy.drop(index=at_state_sizes.index)  # a (variant, setting) there has several models
        language = text_runs(accuracy)  # scored in bits per byte, in a section of its own
        accuracy = accuracy.drop(index=language.index)
        if not accuracy.empty:
            lines += accuracy_section(accuracy, out, f"hw{index}")
        lines += text_section(language, out, f"hw{index}")
        lines += recall_section(at_state_sizes, out, f"hw{index}")
        decode = part[part.probe == "decode"]
        if not decode.empty:
            lines += generation_section(decode, out, f"hw{index}")
    ok_speed = frame[(frame.probe == "speed") & (frame.status == "ok")]
    multi = ok_speed.groupby("variant").fingerprint.nunique()
    if (multi > 1).any():
        cross = ok_speed[ok_speed.variant.isin(multi[multi > 1].index)].pivot_table(
            index=["variant", "seq_len"], columns="fingerprint", values="train_tokens_per_s", aggfunc="last"
        )
        lines += ["## Across hardware: training tokens/s", "", md_table(cross, "{:,.0f}"), ""]
    lines += cross_section(frame)  # its own list of the variants that cannot cross-attend
    lines += maps_lines(frame[~unsupported], out)
    lines[1:1] = ["", contents_line(lines)]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


def contents_line(lines: list[str]) -> str:
    """The report's table of contents as one paragraph under its title: every section (##) with its
    subsections (###) after a colon, linked with GitHub's anchors (a repeated heading gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    sections: list[tuple[str, list[str]]] = []
    for line in lines:
        level = len(line) - len(line.lstrip("#"))
        if level not in (2, 3) or not line[level:].startswith(" "):
            continue
        title = line[level + 1 :].strip()
        slug = anchor(title, 0)
        link = f"[{title}]({anchor(title, seen.get(slug, 0))})"
        seen[slug] = seen.get(slug, 0) + 1
        if level == 2:
            sections.append((link, []))
        elif sections:
            sections[-1][1].append(link)
    parts = [link + (": " + ", ".join(children) if children else "") for link, children in sections]
    return "**Contents**: " + " · ".join(parts)
