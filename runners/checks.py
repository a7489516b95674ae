"""Config values checked before any work: one-line errors that name the key, its value and the allowed range.

The attention hyperparameters are checked by the registry when a variant is
built; the optimizer's values and the task's (whose constructors check their
own arguments) are checked here, so ``runners.sweep`` and ``runners.train``
stop before the first point or step, never after hours of other points.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from hydra.errors import InstantiationException

import variants


class ConfigError(ValueError):
    """A bad config value, reported before any work starts."""


def check_range(key: str, value: Any, *, integer: bool = False, **bounds: Any) -> None:
    """``variants.check_range`` for a config key (``optim.lr``), as a :class:`ConfigError`; ``integer``: no floats."""
    if integer and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}={value!r} must be an integer")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key}={value!r} must be a number")
    try:
        variants.check_range(key, value, **bounds)
    except variants.HyperparameterError as error:
        raise ConfigError(str(error)) from None


def check_optim(optim: Mapping[str, Any], *, where: str = "optim") -> None:
    """The optimizer and schedule values of one training run (``where``: the key prefix in the message)."""
    check_range(f"{where}.lr", optim["lr"], low=0.0, low_inclusive=False)
    check_range(f"{where}.weight_decay", optim["weight_decay"], low=0.0)
    check_range(f"{where}.max_steps", optim["max_steps"], integer=True, low=1)
    check_range(f"{where}.warmup_steps", optim["warmup_steps"], integer=True, low=0, high=optim["max_steps"])
    check_range(f"{where}.val_every", optim["val_every"], integer=True, low=1)  # beyond max_steps: no validation
    check_range(f"{where}.max_time_s", optim["max_time_s"], low=0.0, low_inclusive=False)
    if optim.get("target_acc") is not None:
        check_range(f"{where}.target_acc", optim["target_acc"], low=0.0, high=1.0, low_inclusive=False)
    if optim.get("grad_clip") is not None:
        check_range(f"{where}.grad_clip", optim["grad_clip"], low=0.0)
    limit = optim["limit_val_batches"]
    if isinstance(limit, float):  # Lightning: a float is a share of the batches, an int a count
        check_range(f"{where}.limit_val_batches", limit, low=0.0, high=1.0, low_inclusive=False)
    else:
        check_range(f"{where}.limit_val_batches", limit, integer=True, low=1)


def check_model(model: Mapping[str, Any], *, where: str = "model") -> None:
    """The skeleton's sizes: at least one block of at least one head, a positive width (a model with
    ``layers=0`` has no attention to compare, and a whole sweep of it measures embeddings)."""
    for key in ("layers", "heads", "dim", "ff_mult"):
        if key in model:
            check_range(f"{where}.{key}", model[key], integer=True, low=1)
    if model.get("dim_head") is not None:
        check_range(f"{where}.dim_head", model["dim_head"], integer=True, low=1)
    for key in ("dropout", "attn_dropout"):
        if key in model:
            check_range(f"{where}.{key}", model[key], low=0.0, high=1.0, high_inclusive=False)


def check_seeds(seeds: Any, *, where: str = "sweep.seeds") -> None:
    """Every seed an integer (``[a]`` would plan the whole sweep and fail every accuracy point at its end)."""
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"{where}={list(seeds)}: seeds must be integers, e.g. [0, 1]; got {seed!r}")


def check_writable(folder: Any, *, key: str) -> None:
    """``folder`` exists or can be made, and a file can be written there: before any work, not after a point.

    The check leaves nothing behind: folders it made are removed again (the sweep makes them when it writes).
    """
    path = Path(folder).absolute()
    created = [parent for parent in [path, *path.parents] if not parent.exists()]
    probe = path / f".attnbench-write-check-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        reason = error.strerror or error
        raise ConfigError(f"{key}={folder}: cannot write there ({reason}); give a writable folder") from None
    finally:
        for made in created:  # deepest first
            with contextlib.suppress(OSError):
                made.rmdir()


def instantiate_task(task_cfg: Any, *, where: str = "task") -> Any:
    """The task a config describes; a bad value is a :class:`ConfigError` naming it (Hydra wraps the task's)."""
    try:
        return hydra.utils.instantiate(task_cfg)
    except InstantiationException as error:
        raise ConfigError(f"{where}: {error.__cause__ or error}") from None
