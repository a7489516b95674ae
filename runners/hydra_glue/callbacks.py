"""Hydra callbacks: after a multirun, one results table and one report from the merged store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from runners.hydra_glue import launch
from runners.sweeping.run import finish


class ReportAfterMultirun(Callback):
    """Runs in the launching process once every job has finished (on any launcher, SLURM included).

    Jobs of a multirun only write their points; building the report here,
    once, means parallel jobs never race on report files and the report holds
    every job's points.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        results_dir = Path(launch.absolute(config.results_dir))
        report_dir = launch.absolute(config.report_dir)
        table = finish(results_dir, report_dir, baselines=list(config.sweep.get("baselines") or []))
        print(f"multirun finished: {len(table)} results in {results_dir}")
        if report_dir:
            print(f"report: {Path(report_dir) / 'report.md'}")
