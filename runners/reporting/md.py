"""Markdown tables for the reports, without extra dependencies."""

from __future__ import annotations

import math

import pandas as pd


def md_table(frame: pd.DataFrame, floatfmt: str = "{:.2f}", *, empty: str = "no successful point to show") -> str:
    """A GitHub-markdown table without extra dependencies; ``empty``: the one line that says why there is none."""
    if frame.empty:
        return f"_Nothing to show: {empty}._\n"
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


def folded(summary: str, lines: list[str]) -> list[str]:
    """``lines`` inside a collapsed ``<details>`` block titled ``summary``: long per-length tables stay one
    click away, below what they support, without pushing the next section off the screen."""
    return [f"<details><summary>{summary}</summary>", "", *lines, "", "</details>", ""]
