"""Accuracy as a researcher should read it: over seeds with its spread, at the best learning rate, with ties.

A *setting* is one task, direction and length. Within a setting every variant
trained for the same number of steps; its accuracy is the mean over seeds with
the min-max spread, and variants whose spreads overlap the best one's are
called a tie, never ranked. With a learning-rate grid (``sweep.lrs``) each
variant's rate is chosen by mean validation accuracy and its test accuracy is
reported at that rate (Zoology's protocol).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pandas as pd

from runners.reporting.tables import by_variant, status_label

SETTING = ["task", "direction", "seq_len"]
RUN = ["variant", *SETTING]
TARGETS = (0.5, 0.9)  # time-to-accuracy targets, as fractions of the best mean accuracy of the setting
LEARNED_MEAN = 0.95  # the reference must reach this mean test accuracy in a setting ...
LEARNED_SPREAD = 0.05  # ... with at most this min-max spread over seeds, or the setting's ranking says nothing


class Quality(NamedTuple):
    """What a task's runs are scored by: the record's column, its name, and which way is better."""

    column: str
    name: str
    lower_is_better: bool


ACCURACY = Quality("test_acc", "accuracy", lower_is_better=False)
QUALITY = {"text": Quality("test_bpb", "bpb", lower_is_better=True)}  # language modelling: bits per byte


def quality_of(task: str) -> Quality:
    """The score of ``task``'s runs: test accuracy, or bits per byte for language modelling on text."""
    return QUALITY.get(str(task), ACCURACY)


def best_first(stats: pd.DataFrame) -> pd.DataFrame:
    """Rows of one setting from best to worst mean score (accuracy descending, bits per byte ascending)."""
    lower = bool(stats["lower_is_better"].iloc[0]) if "lower_is_better" in stats and len(stats) else False
    return stats.sort_values("mean", ascending=lower)


def at_chosen_lr(acc: pd.DataFrame) -> pd.DataFrame:
    """The accuracy runs at each variant's best learning rate per setting (failed runs kept as they are)."""
    ok = acc[acc.status == "ok"]
    if ok.empty or ok.lr.nunique(dropna=True) <= 1:
        return acc
    means = ok.groupby([*RUN, "lr"]).val_acc.mean()
    chosen = set(means.groupby(level=RUN).idxmax().values)
    keys = list(zip(*(acc[c] for c in [*RUN, "lr"]), strict=True))
    return acc[[key in chosen or status != "ok" for key, status in zip(keys, acc.status, strict=True)]]


def accuracy_stats(acc: pd.DataFrame) -> pd.DataFrame:
    """Per variant and setting: mean, min and max of its score over seeds (test accuracy, or bits per byte where
    the task is language modelling: ``quality``, ``lower_is_better``), seeds, parameters, steps, rate."""
    rows = []
    for key, runs in acc.groupby(RUN, sort=True):
        ok = runs[runs.status == "ok"]
        quality = quality_of(key[RUN.index("task")])
        row = dict(zip(RUN, key, strict=True)) | {"seeds": len(ok), "runs": len(runs), "params": runs.params.max()}
        row |= {"quality": quality.name, "lower_is_better": quality.lower_is_better}
        if ok.empty:  # every seed failed: the cell shows the status of the first
            measured = dict.fromkeys(("steps", "steps_min", "lr", "mean", "min", "max", "train_tokens_per_s"), math.nan)
            measured |= {"status": runs.status.iloc[0], "message": str(runs.message.iloc[0] or "")}
        else:
            measured = {
                "steps": ok.steps.max(),
                "steps_min": ok.steps.min(),  # below max: some seeds stopped at optim.target_acc
                "lr": ok.lr.iloc[0],
                "mean": ok[quality.column].mean(),
                "min": ok[quality.column].min(),
                "max": ok[quality.column].max(),
                "train_tokens_per_s": ok.train_tokens_per_s_total.median(),
                "status": "ok",
                "message": "",
            }
        rows.append(row | measured)
    return pd.DataFrame(rows)


def tied_best(stats: pd.DataFrame) -> list[str]:
    """The variants of one setting that cannot be told apart from the best: their seed spread reaches the best's
    (accuracy: their max reaches its min; bits per byte: their min reaches its max)."""
    ok = best_first(stats.dropna(subset=["mean"]))
    if ok.empty:
        return []
    best = ok.iloc[0]
    lower = bool(best.get("lower_is_better", False))
    tied = ok[ok["min"] <= best["max"]] if lower else ok[ok["max"] >= best["min"]]
    return list(tied.variant)


def accuracy_cell(row: pd.Series) -> str:
    """'0.912 (0.901-0.923, 2 seeds)', or the failed status."""
    if row.status != "ok":
        return status_label(row)
    missing = f", {row.runs - row.seeds} failed" if row.runs > row.seeds else ""
    return f"{row['mean']:.3f} ({row['min']:.3f}-{row['max']:.3f}, {row.seeds} seeds{missing})"


def accuracy_table(stats: pd.DataFrame) -> pd.DataFrame:
    """variant x length cells of one task and direction, with parameters and the step budget."""
    cells = stats.assign(cell=stats.apply(accuracy_cell, axis=1))
    table = cells.pivot_table(index="variant", columns="seq_len", values="cell", aggfunc="last")
    table.columns = [f"n={n}" for n in table.columns]
    extra = cells.groupby("variant").agg(
        params=("params", "max"), steps=("steps", "max"), fewest=("steps_min", "min"), lr=("lr", "first")
    )
    extra["params"] = extra.params.map(lambda p: f"{p:,.0f}" if pd.notna(p) else "")
    extra["steps"] = [
        "" if pd.isna(most) else f"{most:.0f}" if fewest == most else f"{fewest:.0f}-{most:.0f}"
        for most, fewest in zip(extra.steps, extra.fewest, strict=True)
    ]
    extra = extra.drop(columns="fewest")
    extra["lr"] = extra.lr.map(lambda r: f"{r:g}" if pd.notna(r) else "")
    return by_variant(extra.join(table))


def summary(stats: pd.DataFrame) -> pd.DataFrame:
    """Per setting: the best variants (ties within the seed spread) and the fastest-training among them."""
    rows = []
    for key, group in stats.groupby(SETTING, sort=True):
        tied = tied_best(group)
        row = dict(zip(SETTING, key, strict=True))
        if not tied:
            rows.append(row | {"most accurate (ties within seed spread)": "no successful runs"})
            continue
        best = group.set_index("variant").loc[tied[0]]
        label = tied[0] if len(tied) == 1 else f"{', '.join(tied)} (tie)"
        row["most accurate (ties within seed spread)"] = f"{label}: {best['mean']:.3f}"
        speeds = group[group.variant.isin(tied)].dropna(subset=["train_tokens_per_s"])
        if not speeds.empty:
            fastest = speeds.loc[speeds.train_tokens_per_s.idxmax()]
            row["fastest training among them (tok/s)"] = f"{fastest.variant} ({fastest.train_tokens_per_s:,.0f})"
        rows.append(row)
    return pd.DataFrame(rows).set_index(SETTING) if rows else pd.DataFrame()


def unlearned_settings(stats: pd.DataFrame, reference: str) -> pd.DataFrame:
    """The settings where ``reference`` (exact attention) did not learn the task: mean below
    ``LEARNED_MEAN``, a seed spread above ``LEARNED_SPREAD``, or no successful run.

    There a gap below the reference mixes "cannot" with "has not yet": its ranking is not informative.
    Settings without the reference are not judged (a one-variant sweep with ``sweep.baselines=[]``).
    """
    mine = stats[stats.variant == reference]
    spread = mine["max"] - mine["min"]
    bad = mine[~((mine["mean"] >= LEARNED_MEAN) & (spread <= LEARNED_SPREAD + 1e-12))]
    return bad[[*SETTING, "mean", "min", "max", "seeds", "status"]].reset_index(drop=True)


def unlearned_line(stats: pd.DataFrame, reference: str) -> str:
    """One line naming each setting the reference did not learn, or '' when it learned every one."""
    bad = unlearned_settings(stats, reference)
    if bad.empty:
        return ""
    items = [
        f"{row.task} {row.direction} n={row.seq_len}: "
        + (
            f"`{reference}` {row['mean']:.3f} ({row['min']:.3f}-{row['max']:.3f}, {row.seeds} seeds)"
            if row.status == "ok"
            else f"`{reference}` {row.status}"
        )
        for _, row in bad.iterrows()
    ]
    return (
        f"**The reference did not learn {'these settings' if len(items) > 1 else 'this setting'}; "
        f"{'their rankings are' if len(items) > 1 else 'its ranking is'} not informative** (bar: mean >= "
        f"{LEARNED_MEAN:g} with a seed spread <= {LEARNED_SPREAD:g}; raise `optim.max_steps` or shrink the task): "
        + "; ".join(items)
        + "."
    )


def first_reaching(curve: list[dict], target: float) -> dict | None:
    """The first evaluation of a learning curve at or above ``target``."""
    return next((point for point in curve or [] if point["val_acc"] >= target), None)


def time_to_accuracy(acc: pd.DataFrame) -> pd.DataFrame:
    """Steps and training seconds to reach 50% and 90% of the setting's best mean validation accuracy.

    Averaged over the seeds that reached the target; ``k/n`` says how many did.
    """
    rows = []
    ok = acc[acc.status == "ok"]
    for key, runs in ok.groupby(SETTING, sort=True):
        final = runs.assign(final=runs.learning_curve.map(lambda c: c[-1]["val_acc"] if c else math.nan))
        best = final.groupby("variant").final.mean().max()
        if not best > 0:
            continue
        targets = ", ".join(f"{fraction * best:.3f}" for fraction in TARGETS)
        for variant, mine in runs.groupby("variant"):
            row = dict(zip(SETTING, key, strict=True)) | {"variant": variant, "targets": targets}
            for fraction in TARGETS:
                reached = [p for p in (first_reaching(c, fraction * best) for c in mine.learning_curve) if p]
                title = f"to {fraction:.0%} of best"
                if not reached:
                    row[title] = "not reached"
                    continue
                steps = sum(p["step"] for p in reached) / len(reached)
                seconds = sum(p["train_s"] for p in reached) / len(reached)
                count = "" if len(reached) == len(mine) else f" ({len(reached)}/{len(mine)} seeds)"
                row[title] = f"{steps:,.0f} steps, {seconds:,.1f} s{count}"
            rows.append(row)
    return pd.DataFrame(rows).set_index([*SETTING, "variant"]) if rows else pd.DataFrame()
