"""Entry point, the main job: compare attention variants on speed, memory and accuracy, keeping every result.

    python -m runners.sweep                               # every registered variant, quick default sweep, CPU
    python -m runners.sweep attention=linformer           # one variant, beside the baseline (full)
    python -m runners.sweep sweep=full                    # the longer comparison of the example report
    python -m runners.sweep -m attention=local,performer hardware=cpu,cuda
    python -m runners.sweep sweep=lra attention=linformer attention.k=128 model.layers=4
    python -m runners.sweep attention=local sweep.seeds=[0,1,2] sweep.lrs=[1e-3,3e-3,1e-2]

A sweep is a list of points (variant x hardware x sequence length x probe),
planned in :mod:`runners.sweeping.plan`, measured one by one (timed
probes) or side by side (accuracy runs, ``sweep.accuracy_jobs``) in worker
processes (:mod:`runners.sweeping.execute`) and written to the results store
the moment each completes; points already there with the same config are skipped
unless ``force=true``. A failing point (out of memory, time budget, NaN,
unsupported combination) is recorded with its status and the sweep goes on.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from runners.hydra_glue import launch
from runners.hydra_glue.configs import CONF_DIR, register_configs
from runners.sweeping.plan import ConfigError
from runners.sweeping.run import run_sweep

register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    for key in ("results_dir", "report_dir"):  # every job of a multirun writes to the same folders
        cfg[key] = launch.absolute(cfg[key])
    cfg.wandb.dir = launch.absolute(cfg.wandb.dir)
    try:
        table = run_sweep(cfg)
    except ConfigError as error:
        sys.exit(f"config error: {error}")
    print(f"results: {len(table)} points in {cfg.results_dir} (table: results_table.csv)")
    if cfg.report_dir and not launch.in_multirun():
        print(f"report: {Path(cfg.report_dir) / 'report.md'}")


if __name__ == "__main__":
    main()
