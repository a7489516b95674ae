"""Plots of the approximation probe: a grid of attention heatmaps and the error-vs-budget curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm, Normalize

PANELS_PER_ROW = 4  # budget curves: panels per row of the figure
LOG_FLOOR = 1e-4  # log colour scale: weights below this (zeros, Linformer's negative weights) show as the floor


def heatmap_grid(
    rows: dict[str, dict[str, np.ndarray]], cases: list[str], path: Path, *, title: str, log_color: bool = True
) -> Path:
    """Variants (rows) x input cases (columns), one colour scale for every panel; a missing panel says why.

    ``rows``: label -> case -> 2-D weights (query rows, key columns). The scale runs from
    0 (or ``LOG_FLOOR`` in log colour) to the largest weight over all panels.
    """
    top = max((float(np.max(m)) for panels in rows.values() for m in panels.values()), default=1.0)
    norm = LogNorm(vmin=LOG_FLOOR, vmax=max(top, LOG_FLOOR * 10)) if log_color else Normalize(vmin=0.0, vmax=top)
    width, height = 2.3 * len(cases) + 1.4, 2.2 * len(rows) + 0.6
    fig, axes = plt.subplots(len(rows), len(cases), figsize=(width, height), dpi=100, squeeze=False)
    fig.subplots_adjust(
        left=0.5 / width, right=1 - 1.2 / width, top=1 - 0.5 / height, bottom=0.1 / height, wspace=0.06, hspace=0.1
    )
    image = None
    for r, (label, panels) in enumerate(rows.items()):
        for c, case in enumerate(cases):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if case in panels:
                weights = np.asarray(panels[case], dtype=float)
                shown = np.clip(weights, LOG_FLOOR, None) if log_color else np.clip(weights, 0.0, None)
                image = ax.imshow(shown, cmap="magma", norm=norm, interpolation="nearest")
            else:
                ax.text(0.5, 0.5, "unsupported", ha="center", va="center", transform=ax.transAxes, fontsize=9)
                ax.set_facecolor("0.9")
            if r == 0:
                ax.set_title(case, fontsize=9)
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
    fig.suptitle(title, fontsize=10, y=1 - 0.15 / height)
    if image is not None:
        bar = fig.add_axes((1 - 0.9 / width, 0.3, 0.2 / width, 0.4))
        fig.colorbar(image, cax=bar, label="attention weight" + (" (log)" if log_color else ""))
    fig.savefig(path)
    plt.close(fig)
    return path


def budget_plot(curve: pd.DataFrame, path: Path, *, title: str, metric: str = "output_rel_error") -> Path:
    """One panel per variant: ``metric`` against its budget hyperparameter, random and trained inputs."""
    groups = list(curve.groupby("variant", sort=True))
    columns = min(PANELS_PER_ROW, max(len(groups), 1))
    rows = -(-max(len(groups), 1) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.0 * rows), dpi=100, squeeze=False)
    for ax in axes.flat[len(groups) :]:
        ax.set_visible(False)
    for ax, (variant, group) in zip(axes.flat, groups, strict=False):
        for case, line in group.groupby("case", sort=True):
            line = line.sort_values("value")
            ax.plot(line.value, line[metric], marker="o", label=case)
        ax.set_xscale("symlog", base=2, linthresh=1)
        ax.set_yscale("log")
        ax.set_title(variant, fontsize=9)
        ax.set_xlabel(group.parameter.iloc[0])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for row in axes:
        row[0].set_ylabel(metric.replace("_", " "))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
