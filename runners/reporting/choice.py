"""Which attention for you: the Pareto front of (accuracy, training speed, peak memory) and three picks.

A *setting* here is one hardware fingerprint, sequence length and direction
(and task, where accuracy was measured). Speed and memory come from the speed
points of that fingerprint at that length and direction; accuracy from the
accuracy runs at the same length and direction, never from another length, on
whichever machine trained them: accuracy is a property of the config and seed,
so one machine's runs serve every machine's speed. Accuracy is compared over seeds: two variants whose
min-max spreads overlap are tied, so neither beats the other on accuracy.

The picks answer "what comes first for you": speed (the fastest training
step), memory (the leanest training step) or accuracy (the best mean, ties
named, the fastest of them picked). The speed and memory picks are made among
the variants within ``ACCURACY_SLACK`` of the best mean accuracy, so a fast
variant that did not learn the task is not the answer; ``runners.advise``
takes the reader's own bounds instead.
"""

from __future__ import annotations

import pandas as pd

from runners.reporting.accuracy import LEARNED_SPREAD, accuracy_stats, at_chosen_lr, tied_best
from runners.reporting.crossover import MEMORY_TIE  # memory picks: peaks within it of the leanest are named beside it
from runners.reporting.recall import recall_runs
from runners.reporting.styles import CAUSAL, REFERENCE, variant_order
from runners.reporting.text import TEXT_HEADING

ACCURACY_SLACK = LEARNED_SPREAD  # speed and memory picks: accuracy at most this far below the best mean
SPEED = ["train_tokens_per_s", "infer_tokens_per_s", "peak_memory_mib"]
# the paired ratio to full of interleaved rounds and its interval, where the points have them
RATIO = ["train_tokens_per_s_ratio", "train_tokens_per_s_ratio_lo", "train_tokens_per_s_ratio_hi"]
# a setting's score over seeds: accuracy, or bits per byte (lower is better) for language modelling on text
SCORE = ["mean", "min", "max", "seeds", "quality", "lower_is_better"]


def lower_is_better(rows: pd.DataFrame) -> bool:
    """Whether the setting's score is one to minimise (bits per byte) rather than maximise (accuracy)."""
    known = rows["lower_is_better"].dropna() if "lower_is_better" in rows else pd.Series(dtype=bool)
    return bool(known.iloc[0]) if not known.empty else False


def at_least_as_good(a: float, b: float, lower: bool) -> bool:
    return a <= b if lower else a >= b


def direction_of(variant: str) -> str:
    """The direction of a speed row: causal rows carry the ``(causal)`` suffix."""
    return "causal" if variant.endswith(CAUSAL) else "bidirectional"


def speed_rows(part: pd.DataFrame, *, only_ok: bool = True) -> pd.DataFrame:
    """The (ok) speed points of one fingerprint with ``variant`` as registered and their ``direction``."""
    speed = part[part.probe == "speed"]
    if only_ok:
        speed = speed[speed.status == "ok"]
    return speed.assign(direction=speed.variant.map(direction_of), variant=speed.variant.str.removesuffix(CAUSAL))


def accuracy_settings(part: pd.DataFrame) -> pd.DataFrame:
    """Per variant and (task, direction, length): accuracy over seeds at its best rate (recall runs left out)."""
    accuracy = part[(part.probe == "accuracy") & (part.status != "unsupported")]
    accuracy = accuracy.drop(index=recall_runs(accuracy).index)
    if accuracy.empty:
        return pd.DataFrame(columns=["variant", "task", "direction", "seq_len", *SCORE])
    stats = accuracy_stats(at_chosen_lr(accuracy))
    return stats[stats.status == "ok"]


def speed_score(rows: pd.DataFrame) -> pd.Series:
    """What speed picks, the front and advise's ranking compare: the paired training ratio to ``full`` where every
    measured row has one (``full``: 1.0), else tokens/s. The ratio was timed step by step beside ``full`` in each
    process; the tokens/s are medians of separate processes, which drift apart (at n = 256, linformer's and full's
    own processes put linformer ahead while their paired steps put it at 0.77x, full-vs-full pairs at 1.00)."""
    measured = rows.train_tokens_per_s.notna()
    ratio = rows.get("train_tokens_per_s_ratio")
    if ratio is not None and measured.any() and ratio[measured].notna().all():
        return ratio.where(measured)
    return rows.train_tokens_per_s


def candidates(speed: pd.DataFrame, stats: pd.DataFrame | None) -> pd.DataFrame:
    """One row per variant with its speed and memory and, where given, its accuracy (mean, min, max, seeds)."""
    rows = speed.drop_duplicates("variant", keep="last").set_index("variant")[SPEED + [c for c in RATIO if c in speed]]
    if stats is not None and not stats.empty:
        rows = rows.join(stats.set_index("variant")[SCORE], how="outer")
    rows["speed_score"] = speed_score(rows)
    return rows.reindex(variant_order(rows.index))


def dominates(a: pd.Series, b: pd.Series, *, with_accuracy: bool) -> bool:
    """``a`` is at least as good as ``b`` on every axis and better on one (accuracy: the mean over seeds).

    The front is Pareto on means, so it stays transitive; seed-spread ties are named where the picks are made.
    """
    speed_ok = a.speed_score >= b.speed_score and a.peak_memory_mib <= b.peak_memory_mib
    speed_better = a.speed_score > b.speed_score or a.peak_memory_mib < b.peak_memory_mib
    if not with_accuracy:
        return bool(speed_ok and speed_better)
    lower = bool(a.get("lower_is_better", False) == True)  # noqa: E712 (NaN: accuracy)
    score_ok = at_least_as_good(a["mean"], b["mean"], lower)
    return bool(speed_ok and score_ok and (speed_better or a["mean"] != b["mean"]))


def pareto(rows: pd.DataFrame, *, with_accuracy: bool) -> list[str]:
    """The variants no other variant dominates, in report order (rows lacking a needed number are left out);
    ``rows`` from :func:`candidates`."""
    needed = ["speed_score", "peak_memory_mib"] + (["mean", "min", "max"] if with_accuracy else [])
    full = rows.dropna(subset=needed)
    return [
        name
        for name, row in full.iterrows()
        if not any(dominates(other, row, with_accuracy=with_accuracy) for key, other in full.iterrows() if key != name)
    ]


def picks(rows: pd.DataFrame) -> dict[str, object]:
    """The speed-first, memory-first and accuracy-first picks of one setting (``rows`` from :func:`candidates`),
    and the accuracy ties.

    Returns ``speed`` and ``memory`` (a variant or None), ``accuracy`` (the fastest of the tied best, or
    the best where no speed was measured) and ``ties`` (the variants tied for the best accuracy).
    """
    measured = rows.dropna(subset=["train_tokens_per_s", "peak_memory_mib"])
    scored = rows.dropna(subset=["mean"]) if "mean" in rows else rows.iloc[0:0]
    pool = measured
    if not scored.empty:
        if lower_is_better(scored):  # bits per byte: within the slack above the lowest
            near_best = scored["mean"] <= scored["mean"].min() + ACCURACY_SLACK
        else:
            near_best = scored["mean"] >= scored["mean"].max() - ACCURACY_SLACK
        pool = measured[measured.index.isin(scored.index[near_best])]
    ties = tied_best(scored.reset_index()) if not scored.empty else []
    tied_measured = measured[measured.index.isin(ties)]
    best_accuracy = tied_measured.speed_score.idxmax() if not tied_measured.empty else (ties or [None])[0]
    speed = pool.speed_score.idxmax() if not pool.empty else None
    memory = pool.peak_memory_mib.idxmin() if not pool.empty else None
    return {
        "speed": speed,
        "speed_ties": timing_ties(pool, speed),
        "memory": memory,
        "memory_ties": memory_ties(pool, memory),
        "accuracy": best_accuracy,
        "ties": ties,
    }


def memory_ties(pool: pd.DataFrame, pick: str | None) -> list[str]:
    """The variants whose peak memory is within ``MEMORY_TIE`` of the leanest's.

    Live tensor bytes repeat exactly, so any difference is real; but where the whole model's peak is set
    outside attention (weights, the feed-forward, the loss), variants differ by fractions of a percent and
    naming one "leanest" would tell the reader a choice that does not matter.
    """
    if pick is None:
        return []
    ceiling = pool.at[pick, "peak_memory_mib"] * (1 + MEMORY_TIE)
    return [name for name, row in pool.iterrows() if name != pick and row.peak_memory_mib <= ceiling]


def timing_ties(pool: pd.DataFrame, pick: str | None) -> list[str]:
    """The variants whose interval of the paired training ratio reaches the pick's: the pick is no clear winner.

    Empty where the points carry no intervals (measured alone, or before interleaved rounds existed).
    """
    lo, hi = "train_tokens_per_s_ratio_lo", "train_tokens_per_s_ratio_hi"
    if pick is None or lo not in pool or pd.isna(pool.at[pick, lo]):
        return []
    floor = pool.at[pick, lo]
    return [name for name, row in pool.iterrows() if name != pick and pd.notna(row[hi]) and row[hi] >= floor]


def evidence(rows: pd.DataFrame, name: str) -> str:
    """'45,000 train tok/s (2.60x full), 31.0 MiB peak (1.10x), accuracy 0.999 (0.998-1.000, 2 seeds)'."""
    row = rows.loc[name]
    reference = rows.loc[REFERENCE] if REFERENCE in rows.index and name != REFERENCE else None
    parts = []
    if pd.notna(row.train_tokens_per_s):
        speedup = memory = ""
        if name != REFERENCE and "train_tokens_per_s_ratio_lo" in rows and pd.notna(row["train_tokens_per_s_ratio_lo"]):
            ratio, lo, hi = (row[c] for c in RATIO)  # paired per round, with its interval
            speedup = f" ({ratio:.2f}x `{REFERENCE}`, {lo:.2f}-{hi:.2f})"
            memory = f" ({row.peak_memory_mib / reference.peak_memory_mib:.2f}x)" if reference is not None else ""
        elif reference is not None and pd.notna(reference.train_tokens_per_s):
            speedup = f" ({row.train_tokens_per_s / reference.train_tokens_per_s:.2f}x `{REFERENCE}`)"
            memory = f" ({row.peak_memory_mib / reference.peak_memory_mib:.2f}x)"
        parts += [f"{row.train_tokens_per_s:,.0f} train tok/s{speedup}", f"{row.peak_memory_mib:,.1f} MiB peak{memory}"]
    if "mean" in rows and pd.notna(row["mean"]):
        name = row["quality"] if "quality" in rows and pd.notna(row["quality"]) else "accuracy"
        parts.append(f"{name} {row['mean']:.3f} ({row['min']:.3f}-{row['max']:.3f}, {row.seeds:.0f} seeds)")
    return ", ".join(parts)


def anchor(heading: str, index: int) -> str:
    """GitHub's link target of the ``index``-th heading with this text (0: the first)."""
    slug = "".join(c for c in heading.lower() if c.isalnum() or c in " -_").replace(" ", "-")
    return f"#{slug}" + (f"-{index}" if index else "")


def setting_lines(rows: pd.DataFrame, title: str, links: str, *, with_accuracy: bool) -> list[str]:
    """The bullets of one setting: the front and the three picks, each with its numbers."""
    chosen = picks(rows)
    front = pareto(rows, with_accuracy=with_accuracy)
    axes = "accuracy, training tok/s, peak memory" if with_accuracy else "training tok/s, peak memory"
    lines = [f"**{title}** ({links})", ""]
    if chosen["speed"] is None:
        lines.append("- Speed and memory: no speed points at this length and direction on this hardware")
    else:
        lines.append(f"- Pareto front ({axes}): " + ", ".join(f"`{v}`" for v in front))
        tied = chosen["speed_ties"]
        doubt = f"; no clear winner: the timing interval reaches {', '.join(f'`{v}`' for v in tied)}" if tied else ""
        lines.append(f"- Speed first: `{chosen['speed']}`, {evidence(rows, chosen['speed'])}{doubt}")
        alike = chosen["memory_ties"]
        close = (
            f"; no clear winner: within {MEMORY_TIE:.0%} of its peak: {', '.join(f'`{v}`' for v in alike)}"
            if alike
            else ""
        )
        lines.append(f"- Memory first: `{chosen['memory']}`, {evidence(rows, chosen['memory'])}{close}")
    if with_accuracy:
        ties = chosen["ties"]
        tie = f"; tied within the seed spread: {', '.join(f'`{v}`' for v in ties)}" if len(ties) > 1 else ""
        pick = chosen["accuracy"]
        lines.append(f"- Accuracy first: `{pick}`, {evidence(rows, pick)}{tie}")
    else:
        lines.append("- Accuracy first: no accuracy was measured at this length and direction on this hardware")
    return [*lines, ""]


def choice_section(frame: pd.DataFrame) -> list[str]:
    """The report's opening section: per fingerprint, length and direction, the front and the picks."""
    lines = [
        "## Which attention for you",
        "",
        "Per hardware, length and direction: the variants no other beats on every axis (Pareto front), and the "
        "pick when training speed, memory or accuracy comes first. Speed and memory picks are made among the "
        f"variants within {ACCURACY_SLACK:g} of the best mean accuracy (or bits per byte, lower is better, for "
        "language modelling on text) where it was measured at that length; ties (overlapping seed spreads) are "
        "named. Accuracy and speed are paired only at the "
        "same length and direction; speed and memory are each machine's own, accuracy is shared (a property of "
        "the config). Your own bounds: `python -m runners.advise --results <this "
        "folder> --seq-len N --min-accuracy A --max-memory-mib M`.",
        "",
    ]
    stats = accuracy_settings(frame[frame.status != "unsupported"])  # a property of the config: every machine's
    timed = set(frame[frame.probe == "speed"].fingerprint)
    # the machines whose part of the report has a speed section (the report writes one wherever a speed point ran)
    speed_sections = set(frame[(frame.probe == "speed") & (frame.status != "unsupported")].fingerprint)
    scored = frame[(frame.probe == "accuracy") & (frame.status != "unsupported") & (frame.task != "text")]
    accuracy_sections = set(scored.fingerprint)  # ... and an accuracy section wherever other tasks were trained
    for index, (fingerprint, whole) in enumerate(frame.groupby("fingerprint", sort=True)):
        part = whole[whole.status != "unsupported"]
        speed = speed_rows(part)
        if speed.empty and (timed or stats.empty or index > 0):
            continue  # accuracy alone is shown once, under the first machine, where no machine timed anything
        lines += [f"### On {fingerprint}", ""]
        ordered = sorted(speed_sections)
        speed_index = ordered.index(fingerprint) if fingerprint in speed_sections else 0
        links = (  # the n-th "Speed and memory" heading is the n-th machine with speed points, not the n-th machine
            f"[speed]({anchor('Speed and memory', speed_index)}), "
            f"[crossovers]({anchor('Crossover lengths: from which n a variant beats full', speed_index)})"
        )
        settings = sorted(
            set(zip(speed.seq_len, speed.direction, strict=True))
            | set(zip(stats.seq_len, stats.direction, strict=True))
        )
        for seq_len, direction in settings:
            here = speed[(speed.seq_len == seq_len) & (speed.direction == direction)]
            scored = stats[(stats.seq_len == seq_len) & (stats.direction == direction)]
            if scored.empty:
                rows = candidates(here, None)
                lines += setting_lines(rows, f"n = {seq_len:,}, {direction}", links, with_accuracy=False)
                continue
            for task, of_task in scored.groupby("task", sort=True):
                rows = candidates(here, of_task)
                title = f"n = {seq_len:,}, {direction}, {task}"
                if task == "text":  # one section, under the machine that trained the runs (usually one)
                    accuracy_link = f"[bits per byte]({anchor(TEXT_HEADING, 0)})"
                else:
                    ordered = sorted(accuracy_sections)
                    position = ordered.index(fingerprint) if fingerprint in accuracy_sections else 0
                    accuracy_link = f"[accuracy]({anchor('Accuracy', position)})"
                lines += setting_lines(rows, title, f"{accuracy_link}, {links}", with_accuracy=True)
    return lines
