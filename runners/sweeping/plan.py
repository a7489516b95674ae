"""A sweep is a list of points: variant x sequence length x probe, on one hardware config.

Each point is a plain dict of everything that defines it (not the
measurements); its hash is its identity in the store, so an interrupted sweep
resumes where it stopped and changed settings are measured anew.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

import variants
from runners.hydra_glue.configs import attention_config


class ConfigError(ValueError):
    """A bad config value, reported before any work starts."""


def attention_list(cfg: DictConfig) -> list[dict[str, Any]]:
    """The selected variant, or every registered one with its default hyperparameters."""
    if cfg.get("attention") is not None:
        return [OmegaConf.to_container(cfg.attention, resolve=True)]
    return [attention_config(name) for name in variants.names()]


def validate(cfg: DictConfig, attentions: list[dict[str, Any]]) -> None:
    """Fail fast on bad values: unknown variants or hyperparameters, empty or bad lengths."""
    for key in ("seq_lens", "accuracy_seq_lens"):
        lens = list(cfg.sweep[key])
        if any(not isinstance(n, int) or n < 1 for n in lens):
            raise ConfigError(f"sweep.{key} must be positive integers; got {lens}")
    if not cfg.sweep.seq_lens and not cfg.sweep.accuracy_seq_lens:
        raise ConfigError("sweep.seq_lens and sweep.accuracy_seq_lens are both empty: nothing to measure")
    longest = max([*cfg.sweep.seq_lens, *cfg.sweep.accuracy_seq_lens])
    for attention in attentions:
        hparams = {k: v for k, v in attention.items() if k != "name"}
        try:
            variants.build(
                attention["name"], heads=1, dim_head=8, max_seq_len=longest, dropout=cfg.model.attn_dropout, **hparams
            )
        except variants.AttentionError as error:
            raise ConfigError(f"attention config {attention}: {error}") from None
    if cfg.sweep.repeats < 1 or cfg.sweep.batch_size < 1:
        raise ConfigError("sweep.repeats and sweep.batch_size must be >= 1")
    if cfg.hardware.strategy == "ddp" and cfg.hardware.devices != 1 and cfg.sweep.accuracy_seq_lens:
        raise ConfigError(
            "hardware.strategy=ddp relaunches this script once per device, and each copy would run the whole "
            "sweep; inside a sweep use hardware.strategy=ddp_spawn (or train one config with "
            "python -m runners.train hardware.strategy=ddp)"
        )
    if cfg.logger not in ("wandb", "none"):
        raise ConfigError(f"logger={cfg.logger!r} is unknown; choose wandb or none")


def plan_points(cfg: DictConfig, attentions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every point of the sweep with the config that identifies it."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    hardware = OmegaConf.to_container(cfg.hardware, resolve=True)
    task = OmegaConf.to_container(cfg.task, resolve=True)
    points = []
    for attention in attentions:
        shared = {"attention": attention, "model": model, "hardware": hardware}
        for seq_len in cfg.sweep.seq_lens:
            points.append(
                shared
                | {
                    "probe": "speed",
                    "seq_len": seq_len,
                    "causal": cfg.sweep.causal,
                    "batch_size": cfg.sweep.batch_size,
                    "warmup": cfg.sweep.warmup,
                    "repeats": cfg.sweep.repeats,
                }
            )
        for seq_len in cfg.sweep.accuracy_seq_lens:
            points.append(
                shared
                | {
                    "probe": "accuracy",
                    "seq_len": seq_len,
                    "task": task | {"seq_len": seq_len},
                    "optim": OmegaConf.to_container(cfg.optim, resolve=True),
                    "seed": cfg.seed,
                }
            )
    return points
