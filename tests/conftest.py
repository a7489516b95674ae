"""Fixtures shared by every test module: a seeded torch, and the real Hydra config composed at test size."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest

try:
    import torch
except ModuleNotFoundError:  # a bare `pytest` of another environment (pyenv's global one has no torch)
    raise pytest.UsageError(
        f"this pytest runs under {sys.executable}, which cannot import torch: it is not the environment "
        "attnbench was installed into. Run the README's `python -m pytest` with that environment's python."
    ) from None
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from runners.hydra_glue.configs import CONF_DIR, register_configs


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def compose_config(tmp_path) -> Callable[..., DictConfig]:
    """``compose_config(name, *overrides)``: ``conf/NAME.yaml`` composed as the entry points compose it.

    ``"config"`` is the sweep's config: its store, report and wandb files go
    under ``tmp_path`` and the logger is off unless an override turns it on.
    ``"train"`` is the single training run's.
    """
    register_configs()

    def compose_(name: str, *overrides: str) -> DictConfig:
        paths = []
        if name == "config":
            paths = [f"results_dir={tmp_path / 'store'}", f"report_dir={tmp_path / 'report'}", f"wandb.dir={tmp_path}"]
            paths.append("logger=none")
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose(name, overrides=[*paths, *overrides])

    return compose_
