"""Plots of the approximation probe: a grid of attention heatmaps and the error-vs-budget curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm, Normalize

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
    fig, axes = plt.subplots(
        len(rows), len(cases), figsize=(2.3 * len(cases) + 1.0, 2.3 * len(rows) + 0.6), dpi=100, squeeze=False
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
    fig.suptitle(title, fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight" + (" (log)" if log_color else ""))
    fig.savefig(path)
    plt.close(fig)
    return path


def budget_plot(curve: pd.DataFrame, path: Path, *, title: str, metric: str = "output_rel_error") -> Path:
    """One panel per variant: ``metric`` against its budget hyperparameter, random and trained inputs."""
    groups = list(curve.groupby("variant", sort=True))
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(3.2 * max(len(groups), 1), 3.2), dpi=100, squeeze=False)
    for ax, (variant, group) in zip(axes[0], groups, strict=False):
        for case, line in group.groupby("case", sort=True):
            line = line.sort_values("value")
            ax.plot(line.value, line[metric], marker="o", label=case)
        ax.set_xscale("symlog", base=2, linthresh=1)
        ax.set_yscale("log")
        ax.set_title(variant, fontsize=9)
        ax.set_xlabel(group.parameter.iloc[0])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(metric.replace("_", " "))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
