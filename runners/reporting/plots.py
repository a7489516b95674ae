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

from runners.reporting.tables import pareto_front, scaling_exponent


def _plot(path: Path, title: str, xlabel: str, ylabel: str, draw: Callable[[Axes], None]) -> Path:
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


def draw_lines(ax: Axes, ok: pd.DataFrame, value: str, *, with_exponent: bool = False) -> None:
    """One line per variant over sequence length (log-log); the legend can carry the fitted exponent."""
    for variant, group in ok.groupby("variant"):
        group = group.sort_values("seq_len")
        exponent = scaling_exponent(group.seq_len, group[value]) if with_exponent else math.nan
        label = variant if math.isnan(exponent) else f"{variant} (n^{exponent:.2f})"  # a fit needs two lengths
        ax.plot(group.seq_len, group[value], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")


def draw_accuracy(ax: Axes, acc_ok: pd.DataFrame) -> None:
    for variant, group in acc_ok.groupby("variant"):
        group = group.sort_values("seq_len")
        ax.plot(group.seq_len, group.test_acc, marker="o", label=variant)
    ax.set_xscale("log", base=2)


def draw_tradeoff(ax: Axes, ok: pd.DataFrame, acc_ok: pd.DataFrame) -> None:
    """Median training throughput against mean accuracy, with the Pareto front ringed."""
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


def make_plots(speed: pd.DataFrame, accuracy: pd.DataFrame, out: Path, tag: str) -> list[Path]:
    """The four PNGs of one hardware section; their paths."""
    ok = speed[speed.status == "ok"]
    acc_ok = accuracy[accuracy.status == "ok"]
    return [
        _plot(
            out / f"throughput_{tag}.png",
            "Training throughput",
            "sequence length",
            "tokens/s",
            lambda ax: draw_lines(ax, ok, "train_tokens_per_s"),
        ),
        _plot(
            out / f"memory_{tag}.png",
            "Peak memory of a training step",
            "sequence length",
            "MiB",
            lambda ax: draw_lines(ax, ok, "peak_memory_mib", with_exponent=True),
        ),
        _plot(
            out / f"accuracy_{tag}.png",
            "Test accuracy",
            "sequence length",
            "accuracy",
            lambda ax: draw_accuracy(ax, acc_ok),
        ),
        _plot(
            out / f"tradeoff_{tag}.png",
            "Accuracy vs training throughput (median over lengths)",
            "train tokens/s",
            "test accuracy",
            lambda ax: draw_tradeoff(ax, ok, acc_ok),
        ),
    ]
