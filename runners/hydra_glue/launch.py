"""What a sweep job needs to know about the Hydra launcher that started it.

The launchers themselves are Hydra's plugins (joblib, submitit); this module
only reads their config inside a job: how many CPU threads this job may use
so that parallel jobs do not fight over cores, whether the job is one of a
multirun (then the launching process builds the one report), and paths made
absolute against the directory the user launched from.
"""

from __future__ import annotations

import os
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import to_absolute_path
from omegaconf import OmegaConf


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask, which SLURM and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_job(configured: int, launcher: dict[str, Any] | None, cpus: int) -> int:
    """CPU threads for one job: ``configured`` if set, else the machine's CPUs divided among parallel jobs.

    joblib runs ``n_jobs`` jobs at once on this machine (-1: one per CPU);
    submitit gives each job ``cpus_per_task``. Other launchers run one job at
    a time, which gets every CPU.
    """
    if configured > 0:
        return configured
    launcher = launcher or {}
    target = str(launcher.get("_target_", ""))
    if "joblib" in target.lower():
        n_jobs = launcher.get("n_jobs") or 1
        parallel = cpus if n_jobs < 0 else n_jobs
        return max(1, cpus // max(1, parallel))
    if launcher.get("cpus_per_task"):
        return int(launcher["cpus_per_task"])
    return cpus


def hydra_launcher() -> dict[str, Any] | None:
    """The launcher config of the running Hydra job, or None outside Hydra."""
    if not HydraConfig.initialized():
        return None
    return OmegaConf.to_container(HydraConfig.get().launcher, resolve=False)


def in_multirun() -> bool:
    """True inside one job of a ``-m`` multirun (the launcher's callback builds the report afterwards)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def multirun_id() -> str | None:
    """One name shared by every job of a multirun (its sweep folder), for grouping runs; None otherwise."""
    if not in_multirun():
        return None
    return str(HydraConfig.get().sweep.dir).strip("/").replace("/", "-")


def absolute(path: str | None) -> str | None:
    """``path`` against the directory the user launched from, so every job writes to the same place."""
    if path is None:
        return None
    return to_absolute_path(path) if HydraConfig.initialized() else os.path.abspath(path)
