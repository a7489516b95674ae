"""The report's section "How close to exact attention": error tables, budget curves and heatmaps.

Built from maps-probe records (``probe == "maps"``): each carries its list of
``errors`` (one row per input case), its ``budget_curve`` and pooled ``heatmaps``.
These are properties of the config and seeds, not measurements of the machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from runners.reporting.maps_plots import budget_plot, heatmap_grid
from runners.reporting.md import md_table
from runners.reporting.tables import by_variant

METRICS = ("output_rel_error", "matrix_rel_error", "kl", "topk_mass_kept")


def _explode(maps: pd.DataFrame, column: str) -> pd.DataFrame:
    rows = [
        {"variant": record.variant, "seq_len": int(record.seq_len)} | item
        for record in maps.itertuples()
        if isinstance(getattr(record, column), list)
        for item in getattr(record, column)
    ]
    return pd.DataFrame(rows)


def error_table(maps: pd.DataFrame) -> pd.DataFrame:
    """One row per variant, length and input case with every metric (status where a case was unsupported)."""
    errors = _explode(maps, "errors")
    if errors.empty:
        return errors
    for metric in METRICS:
        if metric not in errors:
            errors[metric] = np.nan
    return errors[["variant", "seq_len", "case", "status", *METRICS]].sort_values(["seq_len", "variant", "case"])


def error_pivot(errors: pd.DataFrame, metric: str) -> pd.DataFrame:
    """``metric`` per variant (rows) and case at each length (columns); unsupported cases say so."""
    cells = errors.assign(
        column=errors.case + " n=" + errors.seq_len.astype(str),
        cell=errors[metric].map(lambda x: "" if pd.isna(x) else f"{x:.3g}").where(errors.status == "ok", "n/a"),
    )
    order = list(dict.fromkeys(cells.sort_values(["seq_len"], kind="stable").column))
    return by_variant(cells.pivot_table(index="variant", columns="column", values="cell", aggfunc="first")[order])


def budget_table(maps: pd.DataFrame) -> pd.DataFrame:
    """Budget curves: one row per variant, length, input case and budget value."""
    curve = _explode(maps, "budget_curve")
    if curve.empty:
        return curve
    return curve[["variant", "seq_len", "parameter", "value", "case", "seeds", *METRICS]].sort_values(
        ["variant", "seq_len", "case", "value"]
    )


def heatmap_rows(maps: pd.DataFrame, seq_len: int) -> tuple[dict[str, dict[str, np.ndarray]], list[str]]:
    """Heatmap panels at one length: an exact-softmax row first, then one row per variant; and the case order."""
    rows: dict[str, dict[str, np.ndarray]] = {"exact softmax": {}}
    cases: list[str] = []
    for record in maps[maps.seq_len == seq_len].sort_values("variant").itertuples():
        if not isinstance(record.heatmaps, list):
            continue
        panels = rows.setdefault(record.variant, {})
        for item in record.heatmaps:
            heads = f" (head {item['head']})" if item["case"] == "trained" else ""
            case = item["case"] + heads
            cases.append(case)
            panels[case] = np.asarray(item["map"])
            rows["exact softmax"].setdefault(case, np.asarray(item["exact_map"]))
    return rows, list(dict.fromkeys(cases))


def approximation_section(
    maps: pd.DataFrame, out: Path, tag: str, *, log_color: bool = True, heading: str = "###"
) -> list[str]:
    """Markdown lines of the section, with its plots written into ``out``."""
    errors = error_table(maps)
    if errors.empty:
        return []
    lines = [
        f"{heading} How close to exact attention",
        "",
        "Each variant's effective attention matrix `A` (read through the contract: `out = A v` with one-hot `v`) "
        "against exact softmax on the same `q, k, v`: random inputs (logits of standard deviation "
        "`approximation.logit_scale`), the `q, k, v` of the last layer of a full-attention model trained on a "
        "task (peaked, as trained attention is), random inputs causally, and with padding. A property of the "
        "config and seeds, the same on any machine. Relative output error, mean over real query rows:",
        "",
        md_table(error_pivot(errors, "output_rel_error")),
        "Relative Frobenius error of `A`:",
        "",
        md_table(error_pivot(errors, "matrix_rel_error")),
        "Mean KL(variant row || exact row), nats, where the variant's rows are distributions (blank: they are not):",
        "",
        md_table(error_pivot(errors, "kl")),
        "Share of exact attention's top-k mass per row that the variant keeps (1 = all):",
        "",
        md_table(error_pivot(errors, "topk_mass_kept")),
    ]
    curve = budget_table(maps)
    if not curve.empty:
        longest = int(curve.seq_len.max())
        at_longest = curve[curve.seq_len == longest]
        path = budget_plot(
            at_longest,
            out / f"budget_{tag}.png",
            title=f"Output error vs each variant's budget, n={longest} (mean over module seeds)",
        )
        pivot = at_longest.pivot_table(
            index=["variant", "parameter", "value"], columns="case", values="output_rel_error", aggfunc="first"
        )
        lines += [
            f"**Error vs budget** at n={longest}: relative output error as each variant's budget "
            "hyperparameter grows (mean over `approximation.budget_seeds` module seeds); values a variant refuses "
            "at this length are left out.",
            "",
            md_table(pivot, "{:.3g}"),
            f"![{path.stem}]({path.name})",
            "",
        ]
    longest = int(errors.seq_len.max())
    rows, cases = heatmap_rows(maps, longest)
    if cases:
        scale = "log colour scale" if log_color else "linear colour scale"
        path = heatmap_grid(
            rows,
            cases,
            out / f"maps_{tag}.png",
            title=f"Attention weights at n={longest}, batch element 0 ({scale}, one scale for all panels)",
            log_color=log_color,
        )
        lines += [
            f"**Attention maps** at n={longest} (queries down, keys across; the trained case shows its most "
            "peaked head; maps stored with sweep results are mean-pooled):",
            "",
            f"![{path.stem}]({path.name})",
            "",
        ]
    return lines
