"""The report's plots: throughput, memory (with fitted exponents), accuracy, and the accuracy/speed trade-off."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from runners.reporting.styles import variant_order, variant_style
from runners.reporting.tables import pareto_front, scaling_exponent


def plot_figure(title: str, xlabel: str, ylabel: str, draw: Callable[[Axes], None]) -> Figure:
    """A figure with one axes drawn by ``draw`` and its legend outside, to the right, never over the lines."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    draw(ax)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return fig


def save_plot(path: Path, title: str, xlabel: str, ylabel: str, draw: Callable[[Axes], None]) -> Path:
    fig = plot_figure(title, xlabel, ylabel, draw)
    fig.savefig(path, bbox_inches="tight")  # the canvas grows to hold the legend beside the axes
    plt.close(fig)
    return path


def by_family(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """``frame`` grouped by variant, in the report's order (legends list ``full`` first, then family by family)."""
    groups = dict(tuple(frame.groupby("variant")))
    return [(name, groups[name]) for name in variant_order(groups)]


def draw_lines(ax: Axes, ok: pd.DataFrame, value: str, *, with_exponent: bool = False) -> None:
    """One line per variant over sequence length (log-log); the legend can carry the fitted exponent."""
    for variant, group in by_family(ok):
        group = group.sort_values("seq_len")
        exponent = scaling_exponent(group.seq_len, group[value]) if with_exponent else math.nan
        label = variant if math.isnan(exponent) else f"{variant} (n^{exponent:.2f})"  # a fit needs two lengths
        ax.plot(group.seq_len, group[value], label=label, **variant_style(variant))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")


def draw_accuracy_vs_length(ax: Axes, stats: pd.DataFrame) -> None:
    """Mean test accuracy per variant over length, error bars from the lowest to the highest seed."""
    for variant, group in by_family(stats.dropna(subset=["mean"])):
        group = group.sort_values("seq_len")
        spread = [group["mean"] - group["min"], group["max"] - group["mean"]]
        ax.errorbar(group.seq_len, group["mean"], yerr=spread, capsize=3, label=variant, **variant_style(variant))
    ax.set_xscale("log", base=2)


def draw_learning_curves(ax: Axes, runs: pd.DataFrame, x: str) -> None:
    """Validation accuracy against ``x`` (``step`` or ``train_s``), mean over seeds per evaluation."""
    for variant, group in by_family(runs[runs.status == "ok"]):
        points = pd.DataFrame([point for curve in group.learning_curve for point in curve])
        if points.empty:
            continue
        mean = points.groupby("step", as_index=False)[["train_s", "val_acc"]].mean().sort_values(x)
        ax.plot(mean[x], mean.val_acc, label=variant, markersize=4, **variant_style(variant))


def draw_tradeoff(ax: Axes, stats: pd.DataFrame) -> None:
    """Mean accuracy (error bars: seed spread) against training throughput at one length; Pareto front ringed."""
    points = stats.dropna(subset=["mean", "train_tokens_per_s"])
    for variant, group in by_family(points):
        row = group.iloc[-1]
        spread = [[row["mean"] - row["min"]], [row["max"] - row["mean"]]]
        style = variant_style(variant) | {"linestyle": "none"}
        ax.errorbar(row.train_tokens_per_s, row["mean"], yerr=spread, capsize=3, label=variant, **style)
    if not points.empty:
        front = pareto_front(points, "train_tokens_per_s", "mean").sort_values("train_tokens_per_s")
        draw_front(ax, front.train_tokens_per_s, front["mean"], "Pareto front (ringed)")
    ax.set_xscale("log")


def draw_front(ax: Axes, x: pd.Series, y: pd.Series, label: str) -> None:
    """A front as a dashed black line through its points, each ringed, so it reads over any variant's style."""
    ax.plot(x, y, "k--", marker="o", markersize=14, markerfacecolor="none", label=label)


def speed_plots(speed: pd.DataFrame, out: Path, tag: str) -> list[Path]:
    """Training throughput and peak memory over length; their paths."""
    ok = speed[speed.status == "ok"]
    return [
        save_plot(
            out / f"throughput_{tag}.png",
            "Training throughput",
            "sequence length",
            "tokens/s",
            lambda ax: draw_lines(ax, ok, "train_tokens_per_s"),
        ),
        save_plot(
            out / f"memory_{tag}.png",
            "Peak memory of a training step",
            "sequence length",
            "MiB",
            lambda ax: draw_lines(ax, ok, "peak_memory_mib", with_exponent=True),
        ),
    ]


def accuracy_plots(runs: pd.DataFrame, stats: pd.DataFrame, out: Path, tag: str) -> list[Path]:
    """Per task and direction: accuracy over length, the trade-off at the longest length, and learning curves."""
    paths = []
    for (task, direction), group in stats.groupby(["task", "direction"], sort=True):
        name = f"{task}_{direction}_{tag}"
        paths.append(
            save_plot(
                out / f"accuracy_{name}.png",
                f"Test accuracy, {task} {direction} (mean, min-max over seeds)",
                "sequence length",
                "test accuracy",
                lambda ax, group=group: draw_accuracy_vs_length(ax, group),
            )
        )
        longest = group.seq_len.max()
        paths.append(
            save_plot(
                out / f"tradeoff_{name}.png",
                f"Accuracy vs training throughput, {task} {direction}, n={longest}",
                "train tokens/s (training runs, this hardware)",
                "test accuracy",
                lambda ax, group=group, longest=longest: draw_tradeoff(ax, group[group.seq_len == longest]),
            )
        )
    for (task, direction, seq_len), group in runs.groupby(["task", "direction", "seq_len"], sort=True):
        if not any(isinstance(curve, list) and curve for curve in group.learning_curve):
            continue  # no curve recorded here (or a results.csv written before it kept them): no empty plot
        for x, label in (("step", "optimizer steps"), ("train_s", "seconds in training steps (this hardware)")):
            paths.append(
                save_plot(
                    out / f"curve_{task}_{direction}_{seq_len}_{x}_{tag}.png",
                    f"Validation accuracy, {task} {direction}, n={seq_len}",
                    label,
                    "validation accuracy",
                    lambda ax, group=group, x=x: draw_learning_curves(ax, group, x),
                )
            )
    return paths
