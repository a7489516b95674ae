"""Comparison report from the results store: which variant for my length and hardware?

    python -m runners.report                                   # whole store -> reports/
    python -m runners.report task=MQAR hardware=cpu            # filters (column=value)
    python -m runners.report sweep_id=sweep-20261122-2300 --results results/store --out reports/x

Writes ``report.md`` (readable on GitHub), PNG plots and ``results.csv`` (the
flat table the report was built from). Failed points appear in the tables as
their status (``OOM``, ``diverged``, ``n/a: causal unsupported``), never dropped.
Results from several machines get a section per hardware fingerprint, plus a
cross-hardware table for variants measured on more than one.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from runners import store

REFERENCE = "full"
CAUSAL = " (causal)"  # suffix of causal speed points, which are compared with causal full
COLUMNS = {
    "variant": "variant",
    "hardware": "hardware",
    "hardware_info.fingerprint": "fingerprint",
    "probe": "probe",
    "task": "task",
    "seq_len": "seq_len",
    "status": "status",
    "message": "message",
    "sweep_id": "sweep_id",
    "train_tokens_per_s": "train_tokens_per_s",
    "infer_tokens_per_s": "infer_tokens_per_s",
    "config.batch_size": "batch_size",
    "config.causal": "causal",
    "peak_memory_mib": "peak_memory_mib",
    "state_memory_mib": "state_memory_mib",
    "step_memory_mib": "step_memory_mib",
    "process_peak_mib": "process_peak_mib",
    "flops_per_step": "flops_per_step",
    "params": "params",
    "test_acc": "test_acc",
    "steps": "steps",
    "world_size": "world_size",
    "train_tokens_per_s_total": "train_tokens_per_s_total",
    "train_tokens_per_s_per_device": "train_tokens_per_s_per_device",
    "majority_baseline": "majority_baseline",
}


def flat_results(records: list[dict]) -> pd.DataFrame:
    """One row per point with the columns the report uses."""
    frame = pd.json_normalize(records) if records else pd.DataFrame()
    for column in COLUMNS:
        if column not in frame.columns:
            frame[column] = np.nan
    frame = frame[list(COLUMNS)].rename(columns=COLUMNS)
    frame["fingerprint"] = frame["fingerprint"].fillna(frame["hardware"])
    causal_speed = (frame.probe == "speed") & frame.causal.eq(True)
    frame.loc[causal_speed, "variant"] = frame.loc[causal_speed, "variant"] + CAUSAL  # its own row in every table
    return frame.sort_values(["fingerprint", "probe", "variant", "seq_len"]).reset_index(drop=True)


def status_label(row: pd.Series) -> str:
    """What a failed point shows in a table cell."""
    status, message = row["status"], str(row.get("message") or "")
    if status == "oom":
        return "OOM"
    if status == "unsupported":
        return "n/a: causal unsupported" if "causal" in message else "n/a: unsupported"
    return str(status)


def training_run_cells(accuracy: pd.DataFrame) -> pd.Series:
    """'total (per device x N), steps' for each training run; blank where a run recorded no throughput."""

    def cell(row: pd.Series) -> str:
        if pd.isna(row.train_tokens_per_s_total):
            return ""
        world = int(row.world_size) if pd.notna(row.world_size) else 1
        steps = f", {int(row.steps)} steps" if pd.notna(row.steps) else ""
        return f"{row.train_tokens_per_s_total:,.0f} ({row.train_tokens_per_s_per_device:,.0f} x {world}){steps}"

    return accuracy.apply(cell, axis=1) if not accuracy.empty else pd.Series(dtype=str)


def cell_table(frame: pd.DataFrame, value: str, fmt: str) -> pd.DataFrame:
    """variant x seq_len table of ``value``, failed points shown by their status."""
    if frame.empty:
        return pd.DataFrame()
    cells = frame.apply(lambda r: format(r[value], fmt) if r["status"] == "ok" else status_label(r), axis=1)
    return frame.assign(cell=cells).pivot_table(index="variant", columns="seq_len", values="cell", aggfunc="last")


def relative_table(speed: pd.DataFrame, value: str) -> pd.DataFrame:
    """LRA-style: each variant's ``value`` divided by full's at the same length and direction."""
    ok = speed[speed.status == "ok"]
    table = ok.pivot_table(index="variant", columns="seq_len", values=value, aggfunc="last")
    parts = []
    for causal in (False, True):
        rows = table[table.index.str.endswith(CAUSAL) == causal]
        reference = REFERENCE + CAUSAL if causal else REFERENCE
        if reference in rows.index:
            parts.append(rows.div(rows.loc[reference], axis=1))
    return pd.concat(parts) if parts else pd.DataFrame()


def scaling_exponent(seq_lens: pd.Series, values: pd.Series) -> float:
    """Slope of log(value) against log(n): 1 = linear, 2 = quadratic."""
    mask = values.notna() & (values > 0)
    if mask.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(seq_lens[mask].astype(float)), np.log(values[mask].astype(float)), 1)[0])


SCALED = {
    "peak memory": "peak_memory_mib",
    "step memory": "step_memory_mib",
    "train step time": "train_step_s",
    "inference time": "infer_step_s",
    "FLOPs": "flops_per_step",
}


def scaling_table(speed: pd.DataFrame) -> pd.DataFrame:
    """Per variant, the fitted exponent p of n^p for memory, time and FLOPs over the measured lengths.

    Times per step come from throughput (tokens per step / tokens per second),
    so a variant whose throughput holds steady scales as n^1.
    """
    ok = speed[speed.status == "ok"].copy()
    tokens = ok.seq_len * ok.batch_size.fillna(1)
    ok["train_step_s"] = tokens / ok.train_tokens_per_s
    ok["infer_step_s"] = tokens / ok.infer_tokens_per_s
    rows = {}
    for variant, group in ok.groupby("variant"):
        if group.seq_len.nunique() < 2:
            continue
        row = {"lengths": f"{group.seq_len.min()}-{group.seq_len.max()}"}
        for label, column in SCALED.items():
            row[label] = scaling_exponent(group.seq_len, group[column])
        rows[variant] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("variant")


def pareto_front(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Points not beaten on both ``x`` and ``y`` (higher is better for both)."""
    ordered = points.sort_values(x, ascending=False)
    front, best = [], -math.inf
    for _, row in ordered.iterrows():
        if row[y] > best:
            front.append(row)
            best = row[y]
    return pd.DataFrame(front)


def summary(speed: pd.DataFrame, accuracy: pd.DataFrame) -> pd.DataFrame:
    """Per sequence length: fastest, leanest, most accurate, best trade-off."""
    ok = speed[speed.status == "ok"]
    acc = accuracy[accuracy.status == "ok"].groupby("variant").test_acc.mean()
    rows = []
    for seq_len, group in ok.groupby("seq_len"):
        fastest = group.loc[group.train_tokens_per_s.idxmax()]
        leanest = group.loc[group.peak_memory_mib.idxmin()]
        row = {
            "seq_len": seq_len,
            "fastest (train tok/s)": f"{fastest.variant} ({fastest.train_tokens_per_s:,.0f})",
            "leanest (peak MiB)": f"{leanest.variant} ({leanest.peak_memory_mib:,.0f})",
            "most accurate": f"{acc.idxmax()} ({acc.max():.3f})" if not acc.empty else "no accuracy runs",
        }
        if REFERENCE in acc.index:
            close = set(acc[acc >= acc[REFERENCE] - 0.01].index)
            candidates = group[group.variant.isin(close)]
            if not candidates.empty:
                best = candidates.loc[candidates.train_tokens_per_s.idxmax()]
                row["best trade-off (fastest within 1 pt of full)"] = best.variant
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else ["seq_len"]).set_index("seq_len")


def _plot(path: Path, title: str, xlabel: str, ylabel: str, draw) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    draw(ax)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def make_plots(speed: pd.DataFrame, accuracy: pd.DataFrame, out: Path, tag: str) -> list[Path]:
    ok = speed[speed.status == "ok"]
    acc_ok = accuracy[accuracy.status == "ok"]
    paths = []

    def lines(value, with_exponent=False):
        def draw(ax):
            for variant, group in ok.groupby("variant"):
                group = group.sort_values("seq_len")
                label = variant
                if with_exponent:
                    label += f" (n^{scaling_exponent(group.seq_len, group[value]):.2f})"
                ax.plot(group.seq_len, group[value], marker="o", label=label)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")

        return draw

    paths.append(
        _plot(
            out / f"throughput_{tag}.png",
            "Training throughput",
            "sequence length",
            "tokens/s",
            lines("train_tokens_per_s"),
        )
    )
    paths.append(
        _plot(
            out / f"memory_{tag}.png",
            "Peak memory of a training step",
            "sequence length",
            "MiB",
            lines("peak_memory_mib", with_exponent=True),
        )
    )

    def accuracy_lines(ax):
        for variant, group in acc_ok.groupby("variant"):
            group = group.sort_values("seq_len")
            ax.plot(group.seq_len, group.test_acc, marker="o", label=variant)
        ax.set_xscale("log", base=2)

    paths.append(_plot(out / f"accuracy_{tag}.png", "Test accuracy", "sequence length", "accuracy", accuracy_lines))

    def tradeoff(ax):
        merged = (
            ok.groupby("variant")
            .train_tokens_per_s.median()
            .to_frame()
            .join(acc_ok.groupby("variant").test_acc.mean(), how="inner")
            .reset_index()
        )
        for _, row in merged.iterrows():
            ax.scatter(row.train_tokens_per_s, row.test_acc)
            ax.annotate(row.variant, (row.train_tokens_per_s, row.test_acc), fontsize=8)
        if not merged.empty:
            front = pareto_front(merged, "train_tokens_per_s", "test_acc").sort_values("train_tokens_per_s")
            ax.plot(
                front.train_tokens_per_s,
                front.test_acc,
                "k--",
                marker="o",
                markersize=14,
                markerfacecolor="none",
                label="Pareto front (ringed)",
            )
        ax.set_xscale("log")

    paths.append(
        _plot(
            out / f"tradeoff_{tag}.png",
            "Accuracy vs training throughput (median over lengths)",
            "train tokens/s",
            "test accuracy",
            tradeoff,
        )
    )
    return paths


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


def apply_filters(frame: pd.DataFrame, filters: list[str]) -> pd.DataFrame:
    for item in filters:
        column, _, value = item.partition("=")
        if column not in frame.columns or not value:
            raise SystemExit(f"bad filter {item!r}: use column=value with column in {sorted(frame.columns)}")
        known = sorted(frame[column].dropna().astype(str).unique())
        if value.lower() not in {k.lower() for k in known}:
            raise SystemExit(f"no results with {column}={value}; values in the results: {', '.join(known) or 'none'}")
        matches = frame[column].astype(str).str.lower() == value.lower()
        frame = frame[matches | ((column == "task") & frame.task.isna())]
    return frame


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("filters", nargs="*", help="column=value, e.g. task=MQAR hardware=cpu sweep_id=...")
    parser.add_argument("--results", type=Path, default=Path("results/store"))
    parser.add_argument("--out", type=Path, default=Path("reports"))
    args = parser.parse_args(argv)
    frame = apply_filters(flat_results(store.read_records(args.results)), args.filters)
    if frame.empty:
        raise SystemExit(f"no results in {args.results} match {args.filters or 'anything'}")
    report = build_report(frame, args.out)
    print(f"report: {report.resolve()}")
    return report


if __name__ == "__main__":
    main()
