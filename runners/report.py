"""Entry point: the comparison report from a results store. Which variant for my length and hardware?

    python -m runners.report                                   # results/store -> results/report
    python -m runners.report task=MQAR hardware=cpu            # filters (column=value)
    python -m runners.report sweep_id=sweep-20261122-2300 --results results/store --out reports/x
    python -m runners.report --results reports/<machine>/results.csv --out /tmp/again   # from a committed table
    python -m runners.report --results reports/<machine>/results.csv results/store --out /tmp/both   # merged

Writes ``report.md`` (readable on GitHub), PNG plots and ``results.csv`` (the
flat table the report was built from). Failed points appear in the tables as
their status (``OOM``, ``diverged``, ``n/a: causal unsupported``), never dropped.
Results from several machines get a section per hardware fingerprint, plus a
cross-hardware table for variants measured on more than one. The tables and
plots live in :mod:`runners.reporting`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from runners.reporting.markdown import build_report
from runners.reporting.tables import load_results


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


def build_parser() -> argparse.ArgumentParser:
    """The command's flags (the docs' command reference is generated from this parser)."""
    parser = argparse.ArgumentParser(prog="python -m runners.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("filters", nargs="*", help="column=value, e.g. task=MQAR hardware=cpu sweep_id=...")
    parser.add_argument(
        "--results",
        type=Path,
        nargs="+",
        default=[Path("results/store")],
        help="one or more stores, report folders or results.csv files: one report from all of them",
    )
    parser.add_argument("--out", type=Path, default=Path("results/report"), help="the report's folder")
    parser.add_argument("--baselines", nargs="*", default=["full"], help="variants the report marks as baselines")
    return parser


def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    try:
        frame = apply_filters(pd.concat([load_results(path) for path in args.results], ignore_index=True), args.filters)
    except FileNotFoundError as missing:
        raise SystemExit(f"runners.report: {missing}") from None
    if frame.empty:
        where = ", ".join(str(path) for path in args.results)
        raise SystemExit(f"no results in {where} match {args.filters or 'anything'}")
    report = build_report(frame, args.out, baselines=args.baselines)
    print(f"report: {report.resolve()}")
    return report


if __name__ == "__main__":
    main()
