"""The report itself: ``report.md`` (readable on GitHub) with its tables and plots, and ``results.csv``."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from runners.reporting.plots import make_plots
from runners.reporting.tables import cell_table, relative_table, scaling_table, summary, training_run_cells


def md_table(frame: pd.DataFrame, floatfmt: str = "{:.2f}") -> str:
    """A GitHub-markdown table without extra dependencies."""
    if frame.empty:
        return "_no data_\n"
    frame = frame.reset_index()
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = []
    for _, row in frame.iterrows():
        cells = [
            floatfmt.format(v)
            if isinstance(v, float) and not math.isnan(v)
            else ("" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
            for v in row
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join([header, rule, *rows]) + "\n"


def build_report(frame: pd.DataFrame, out: Path) -> Path:
    """Write report.md, plots and results.csv for ``frame`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "results.csv", index=False)
    failed = int((frame.status != "ok").sum())
    lines = [
        "# attnbench comparison report",
        "",
        f"Built from **{len(frame)} results** ({failed} failed or unsupported, shown where they belong) "
        f"on {frame.fingerprint.nunique()} hardware fingerprint(s). Flat table: `results.csv`.",
        "",
    ]
    for index, (fingerprint, part) in enumerate(frame.groupby("fingerprint", sort=True)):
        tag = f"hw{index}"
        speed = part[part.probe == "speed"]
        accuracy = part[part.probe == "accuracy"]
        lines += [f"## {fingerprint}", ""]
        lines += ["### Summary", "", md_table(summary(speed, accuracy)), ""]
        lines += [
            "### Relative to full (Long Range Arena form)",
            "",
            "Training speed (tokens/s) relative to `full`; above 1 is faster:",
            "",
            md_table(relative_table(speed, "train_tokens_per_s")),
            "Peak memory relative to `full`; below 1 is leaner:",
            "",
            md_table(relative_table(speed, "peak_memory_mib")),
        ]
        lines += [
            "### Scaling with sequence length",
            "",
            "Fitted exponent p of n^p (1 = linear, 2 = quadratic) over the measured lengths. Peak memory "
            "includes the model state, which does not grow with n, so it bends below the step's own growth "
            "at short lengths; `python -m runners.bench` measures the attention cores alone.",
            "",
            md_table(scaling_table(speed)),
        ]
        lines += ["### Absolute numbers", ""]
        for title, value, fmt in [
            ("Training throughput, tokens/s", "train_tokens_per_s", ",.0f"),
            ("Inference throughput, tokens/s", "infer_tokens_per_s", ",.0f"),
            ("Peak memory of a training step, MiB", "peak_memory_mib", ",.1f"),
            ("FLOPs per training step", "flops_per_step", ".3g"),
        ]:
            lines += [f"**{title}**", "", md_table(cell_table(speed, value, fmt)), ""]
        for task, group in accuracy.groupby(accuracy.task.fillna("?")):
            baseline = group.majority_baseline.dropna()
            note = f" (majority-class baseline {baseline.iloc[0]:.3f})" if not baseline.empty else ""
            lines += [f"**Test accuracy, {task}**{note}", "", md_table(cell_table(group, "test_acc", ".3f")), ""]
            lines += [
                f"**Training runs on {task}: tokens/s in total (per device x devices), optimizer steps**",
                "",
                md_table(cell_table(group.assign(run=training_run_cells(group)), "run", "s")),
                "",
            ]
        for path in make_plots(speed, accuracy, out, tag):
            lines += [f"![{path.stem}]({path.name})", ""]
    ok_speed = frame[(frame.probe == "speed") & (frame.status == "ok")]
    multi = ok_speed.groupby("variant").fingerprint.nunique()
    if (multi > 1).any():
        cross = ok_speed[ok_speed.variant.isin(multi[multi > 1].index)].pivot_table(
            index=["variant", "seq_len"], columns="fingerprint", values="train_tokens_per_s", aggfunc="last"
        )
        lines += ["## Across hardware: training tokens/s", "", md_table(cross, "{:,.0f}"), ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report
