"""The two kinds of ``q, k, v`` errors are measured on: seeded random, and taken from a trained model.

Random attention is diffuse and trained attention is peaked, and approximations
fail differently on each: low-rank and random-feature maps do well on diffuse
rows, windows and blocks on peaked ones near the diagonal.
"""

from __future__ import annotations

import functools
import json
from typing import Any, NamedTuple

import pytorch_lightning as pl
import torch

from runners.hydra_glue.configs import TASKS, keyword_defaults
from runners.training.module import SequenceModel
from runners.training.run import quiet_lightning


class Inputs(NamedTuple):
    """``(B, H, N, Dh)`` q, k, v and a ``(B, N)`` padding mask (None: no padding)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    mask: torch.Tensor | None


def random_inputs(
    *, batch: int, heads: int, seq_len: int, dim_head: int, logit_scale: float, seed: int, pad_fraction: float = 0.0
) -> Inputs:
    """Gaussian q, k, v; the logits ``q.k / sqrt(Dh)`` have standard deviation ``logit_scale`` (inverse temperature).

    ``pad_fraction`` > 0 marks that share of the last positions of every sequence as padding.
    """
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, seq_len, dim_head, generator=gen) for _ in range(3))
    mask = None
    if pad_fraction > 0:
        real = seq_len - int(seq_len * pad_fraction)
        mask = torch.arange(seq_len)[None, :].expand(batch, seq_len) < max(real, 1)
    return Inputs(q * logit_scale, k, v, mask)


def trained_inputs(*, model: dict[str, Any], seq_len: int, batch: int, trained: dict[str, Any]) -> Inputs:
    """q, k, v of one layer of a model with full attention trained on a task, on held-out sequences of ``seq_len``.

    The model trains once per process and settings (``trained.steps`` optimizer steps on
    ``trained.task`` at ``trained.seq_len``, seeded: a property of the config, not of the machine)
    and is then read at every requested length; positions are sinusoidal, so lengths beyond the
    training length get the same content-based attention on longer contexts.
    """
    layers = _trained_layer_inputs(json.dumps({"model": model, "trained": trained}, sort_keys=True), seq_len, batch)
    return Inputs(*(None if t is None else t.clone() for t in layers))


@functools.cache
def _trained_module(settings: str) -> SequenceModel:
    config = json.loads(settings)
    trained = config["trained"]
    quiet_lightning()
    task = _task(trained, trained["seq_len"], seed=trained["seed"])
    pl.seed_everything(trained["seed"], verbose=False)
    module = SequenceModel(
        model=config["model"],
        attention={"name": "full"},
        vocab_size=task.vocab_size,
        num_classes=task.num_classes,
        seq_len=trained["max_seq_len"],
        head=task.head,
        causal=False,
        lr=trained["lr"],
        weight_decay=0.01,
        warmup_steps=min(20, trained["steps"]),
        max_steps=trained["steps"],
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=trained["steps"],
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    trainer.fit(module, datamodule=task)
    return module.eval()


@functools.cache
def _trained_layer_inputs(settings: str, seq_len: int, batch: int) -> tuple[torch.Tensor, ...]:
    trained = json.loads(settings)["trained"]
    module = _trained_module(settings)
    if seq_len > trained["max_seq_len"]:
        raise ValueError(
            f"trained inputs at seq_len={seq_len} exceed maps.trained.max_seq_len={trained['max_seq_len']}; raise it"
        )
    sizes = {"num_train": batch, "num_val": batch, "num_test": batch}
    task = _task(trained, seq_len, seed=trained["seed"] + 1, sizes=sizes)  # sequences the model never saw
    task.setup("test")
    tokens, mask, _ = task.dataset("test")[:batch]
    captured: dict[str, tuple[torch.Tensor, ...]] = {}
    core = module.model.blocks[trained["layer"]].attn.core
    hook = core.register_forward_pre_hook(lambda _, args: captured.setdefault("qkv", args))
    try:
        with torch.no_grad():
            module(tokens, mask)
    finally:
        hook.remove()
    q, k, v, layer_mask = captured["qkv"]
    return q, k, v, layer_mask


def _task(trained: dict[str, Any], seq_len: int, *, seed: int, sizes: dict[str, int] | None = None):
    cls = TASKS[trained["task"]]
    arguments = dict(trained.get("task_args") or {}) | (sizes or {}) | {"seq_len": seq_len, "seed": seed}
    if "causal" in keyword_defaults(cls):
        arguments["causal"] = False
    return cls(**arguments)
