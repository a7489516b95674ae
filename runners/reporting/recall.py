"""Recall against state size: accuracy per byte of decoding state, the axis of Zoology and Based (Figure 2).

The accuracy runs of ``sweep.state_sizes`` train each decoding variant at
several values of the knob that sets its state (width, window, feature
dimension); each run's record holds the bytes one sequence's state takes after
n tokens. Per number of key-value pairs, every (variant, knob value) gets its
mean test accuracy over seeds at the learning rate best on validation (the
rate is shown), and the front marks what no smaller state beats.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes

from runners.reporting.accuracy import LEARNED_MEAN, LEARNED_SPREAD
from runners.reporting.md import md_table
from runners.reporting.plots import by_family, draw_front, save_plot
from runners.reporting.styles import REFERENCE, variant_order, variant_style
from runners.reporting.tables import pareto_front

SETTING = ["task", "direction", "seq_len", "num_pairs"]
POINT = ["variant", "state_knob", *SETTING]


def recall_runs(accuracy: pd.DataFrame) -> pd.DataFrame:
    """The accuracy runs planned at a state size (``state_knob`` set)."""
    if "state_knob" not in accuracy:
        return accuracy.iloc[0:0]
    return accuracy[accuracy.state_knob.notna()]


def recall_stats(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (variant, knob value, setting): state bytes, chosen rate, mean/min/max test accuracy over seeds."""
    ok = runs[(runs.status == "ok") & runs.state_bytes.notna()]
    if ok.empty:
        return pd.DataFrame(columns=[*POINT, "state_bytes", "lr", "mean", "min", "max", "seeds", "rates"])
    by_rate = ok.groupby([*POINT, "lr"], dropna=False)
    rates = by_rate.val_acc.mean().reset_index()
    best = rates.loc[rates.groupby(POINT, dropna=False).val_acc.idxmax()]
    chosen = ok.merge(best[[*POINT, "lr"]], on=[*POINT, "lr"])
    stats = chosen.groupby(POINT, dropna=False).agg(
        state_bytes=("state_bytes", "max"),
        lr=("lr", "first"),
        mean=("test_acc", "mean"),
        min=("test_acc", "min"),
        max=("test_acc", "max"),
        seeds=("test_acc", "size"),
    )
    stats["rates"] = rates.groupby(POINT, dropna=False).lr.size()
    return stats.reset_index()


def on_front(stats: pd.DataFrame) -> pd.Series:
    """Per row of one setting: whether no smaller (or equal) state reaches its accuracy."""
    front = pareto_front(stats.assign(smaller=-stats.state_bytes), "smaller", "mean")
    return stats.index.isin(front.index)


def recall_table(stats: pd.DataFrame) -> pd.DataFrame:
    """Rows (variant, knob value, state KiB), a column per number of pairs: accuracy, spread, rate; front: *."""
    cells = []
    for _, group in stats.groupby(SETTING, dropna=False):
        group = group.assign(front=on_front(group))
        for _, row in group.iterrows():
            mark = " *" if row.front else ""
            cells.append(
                {
                    "variant": row.variant,
                    "state": row.state_knob,
                    "state KiB": row.state_bytes / 1024,
                    "pairs": f"pairs={row.num_pairs:.0f}",
                    "cell": f"{row['mean']:.3f} ({row['min']:.3f}-{row['max']:.3f}), lr {row.lr:g}{mark}",
                }
            )
    frame = pd.DataFrame(cells)
    table = frame.pivot_table(index=["variant", "state", "state KiB"], columns="pairs", values="cell", aggfunc="last")
    table = table[sorted(table.columns, key=lambda c: int(c.removeprefix("pairs=")))]  # 8 before 16
    table = table.reset_index()
    order = {name: i for i, name in enumerate(variant_order(table.variant))}
    table = table.sort_values(["variant", "state KiB"], key=lambda c: c.map(order) if c.name == "variant" else c)
    table["state KiB"] = table["state KiB"].map(lambda kib: f"{kib:,.1f}")
    return table.set_index(["variant", "state", "state KiB"])


def draw_recall(ax: Axes, stats: pd.DataFrame) -> None:
    """Mean accuracy against state bytes (log x), a line per variant over its knob; the front ringed."""
    for variant, group in by_family(stats):
        group = group.sort_values("state_bytes")
        spread = [group["mean"] - group["min"], group["max"] - group["mean"]]
        ax.errorbar(group.state_bytes, group["mean"], yerr=spread, capsize=3, label=variant, **variant_style(variant))
    front = stats[on_front(stats)].sort_values("state_bytes")
    draw_front(ax, front.state_bytes, front["mean"], "front (ringed): no smaller state does better")
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)


def reference_below_bar(stats: pd.DataFrame) -> str:
    """The state sizes and pair counts where exact attention did not learn the task (the accuracy bar)."""
    mine = stats[stats.variant == REFERENCE]
    bad = mine[~((mine["mean"] >= LEARNED_MEAN) & (mine["max"] - mine["min"] <= LEARNED_SPREAD + 1e-12))]
    if bad.empty:
        return ""
    items = [
        f"{row.state_knob}, {row.num_pairs:.0f} pairs: {row['mean']:.3f} ({row['min']:.3f}-{row['max']:.3f})"
        for _, row in bad.iterrows()
    ]
    return (
        f"**`{REFERENCE}` did not learn the task at every size** (bar: mean >= {LEARNED_MEAN:g}, seed spread <= "
        f"{LEARNED_SPREAD:g}), so a gap below it there mixes 'cannot' with 'has not yet': " + "; ".join(items) + "."
    )


def recall_section(accuracy: pd.DataFrame, out: Path, tag: str) -> list[str]:
    """The report's section: per setting, a plot per number of pairs and one table; [] without such runs."""
    runs = recall_runs(accuracy)
    if runs.empty:
        return []
    stats = recall_stats(runs)
    lines = [
        "### Recall against state size",
        "",
        "Accuracy on an associative-recall task against the bytes of one sequence's decoding state after n "
        "tokens (fp32), each decoding variant trained at several values of the knob that sets its state "
        "(`sweep.state_sizes`), as in Zoology (Arora et al. 2024) and Based (Figure 2). Mean test accuracy over "
        "seeds (min-max) at the learning rate best on validation (`lr`); `*`: on the front, no smaller state "
        "does better. A property of the config and seeds, like every accuracy.",
        "",
    ]
    if stats.empty:
        failed = runs.status.value_counts().to_dict()
        return [*lines, f"No run of this section succeeded ({failed}).", ""]
    unlearned = reference_below_bar(stats)
    if unlearned:
        lines += [unlearned, ""]
    for (task, direction, seq_len), group in stats.groupby(["task", "direction", "seq_len"], sort=True):
        baseline = runs[(runs.task == task) & (runs.seq_len == seq_len)].majority_baseline.dropna()
        note = f"; majority-class baseline {baseline.min():.3f}" if not baseline.empty else ""
        lines += [f"**{task}, {direction}, n={seq_len}**{note}", "", md_table(recall_table(group)), ""]
        for pairs, part in group.groupby("num_pairs", sort=True):
            path = save_plot(
                out / f"recall_{task}_{direction}_{seq_len}_{pairs:.0f}pairs_{tag}.png",
                f"Recall vs decoding state, {task} {direction}, n={seq_len}, {pairs:.0f} pairs",
                "decoding state per sequence, bytes (log)",
                "test accuracy",
                lambda ax, part=part: draw_recall(ax, part.reset_index(drop=True)),
            )
            lines.append(f"![{path.stem}]({path.name})\n")
    failed = runs[runs.status != "ok"]
    if not failed.empty:
        lines += [
            f"{len(failed)} run(s) of this section failed: "
            + ", ".join(f"{k} {v}" for k, v in failed.status.value_counts().items())
            + " (their rows in `results.csv`).",
            "",
        ]
    return lines
