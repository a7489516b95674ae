"""What a result needs to be reproduced: config, versions, commit and hardware fingerprint."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from runners.measure.bf16 import bf16_native
from runners.measure.matmul_peak import matmul_peak_attempts
from runners.results import machine

PACKAGES = ("torch", "pytorch-lightning", "torchmetrics", "hydra-core", "wandb", "pandas", "numpy")


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    """The project's commit (with ``-dirty`` if there are uncommitted changes), if in a git checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def hardware_fingerprint(accelerator: str, *, with_matmul_peak: bool = True) -> dict[str, Any]:
    """The machine (:mod:`runners.results.machine`), threads, bf16 support and the matmul peak: what numbers ran on.

    ``machine`` is the identity timed points carry; ``fingerprint`` the label a report's section is headed
    with (the machine and, on a CPU, the threads). ``bf16_native`` says whether bf16 matmuls run in hardware
    here (False: emulated, hundreds of times slower). ``matmul_gflops`` (fp32, and bf16 where native; a few
    seconds at most on any machine; the fastest of a few attempts, all kept in ``matmul_gflops_attempts``) is the
    ceiling reports compare each variant's achieved GFLOP/s with.
    """
    identity = machine.machine_identity(accelerator)
    info: dict[str, Any] = {
        "machine": identity,
        "cpu_model": machine.cpu_model(),
        "cpu_microarch": machine.cpu_microarchitecture(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "host": platform.node(),
    }
    if machine.on_cuda(accelerator):
        info |= {
            "gpu_name": identity["gpu_name"],
            "gpu_memory_mib": torch.cuda.get_device_properties(0).total_memory // 2**20,
        }
        info |= machine.gpu_versions()
        info["fingerprint"] = machine.machine_label(identity)
    else:
        info["fingerprint"] = f"{machine.machine_label(identity)} x{info['torch_threads']} threads"
    device = "cuda" if machine.on_cuda(accelerator) else "cpu"
    info["bf16_native"] = bf16_native(device)
    if with_matmul_peak:
        attempts = matmul_peak_attempts(device)
        info["matmul_gflops"] = {name: max(rates) for name, rates in attempts.items()}
        info["matmul_gflops_attempts"] = attempts  # the spread behind the peak
    return info


def collect(cfg: DictConfig) -> dict[str, Any]:
    """Context shared by every point of a sweep."""
    return {
        "resolved_config": OmegaConf.to_container(cfg, resolve=True),
        "versions": package_versions() | {"python": platform.python_version()},
        "git_commit": git_commit(),
        "hardware_info": hardware_fingerprint(cfg.hardware.accelerator),
        "date": dt.datetime.now(dt.UTC).isoformat(),
    }
