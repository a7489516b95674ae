"""One accuracy run: build the task, the module and a Trainer from the config, train, test, report a status.

Accuracy is a property of the config and the seed, never of the machine's
load: every run trains for ``optim.max_steps`` steps (seeded data,
initialization and dropout; deterministic algorithms on CPU), or, with
``optim.target_acc`` set, until a validation (every ``optim.val_every`` steps)
reaches that accuracy: a step count, so the same on any machine (Zoology's
protocol stops at 0.99). It then reports test accuracy and its learning curve. ``optim.max_time_s`` is only a safety
cap: a run that reaches it ends as ``timeout`` with its partial curve and no
final accuracy. A NaN/inf loss ends the run as ``diverged``; a causal task
with a variant that cannot be causal is ``unsupported``. None of these raises;
a bad config value does, before any work (:class:`runners.checks.ConfigError`:
an optimizer or task value out of range, a bf16 precision this machine would only emulate).
"""

from __future__ import annotations

import logging
import resource
import time
import warnings
from datetime import timedelta
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import EarlyStopping

import variants
from runners.checks import ConfigError, check_optim, instantiate_task
from runners.measure.bf16 import check_precision
from runners.training.curve import LearningCurve, curve_rows
from runners.training.module import SequenceModel
from runners.training.progress import ProgressLine
from runners.training.throughput import TrainThroughput
from tasks import GeneratedTask
from variants._registry import cannot_cross


class ReleaseProcessGroup(pl.Callback):
    """Destroys the process group of a multi-process run when the run's stage ends.

    Lightning creates the group but destroys only NCCL ones (at exit). A gloo
    group still alive when a ``ddp_spawn`` worker exits tears down its threads
    during static destruction and the worker sometimes aborts with "terminate
    called without an active exception" (we saw 1 run in 10), which fails the
    whole run. The next fit or test creates a fresh group.
    """

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def quiet_lightning() -> None:
    """Keep the console to the project's own lines: no Lightning banners, tips or hints about workers.

    Called when this module is imported, which also happens in every ``ddp_spawn`` worker (a fresh
    interpreter that unpickles the trainer), so the workers are as quiet as the sweep.

    "GPU available: False", "💡 Tip: ..." and the like are INFO records of
    Lightning's loggers; the warnings filtered here are about choices we made
    on purpose (in-memory tensors with ``num_workers=0``, skipping a diverged
    step) or deprecations inside Lightning itself.
    """
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
    # A step whose loss is NaN/inf returns None on purpose (the run ends as diverged, its step skipped).
    warnings.filterwarnings("ignore", message=r".*`training_step` returned `None`.*")
    # DDP evaluation pads the last batch by repeating samples; our test splits divide evenly by 2 devices.
    warnings.filterwarnings("ignore", message=r".*Using `DistributedSampler` with the dataloaders.*")


quiet_lightning()


def build_trainer(cfg: DictConfig, *, logger: Any = False, callbacks: list[pl.Callback] | None = None) -> pl.Trainer:
    """A Trainer from the optim and hardware configs (``hardware.strategy``: auto, ddp, ddp_spawn, ...)."""
    return pl.Trainer(
        callbacks=[*(callbacks or []), ReleaseProcessGroup()],
        accelerator=cfg.hardware.accelerator,
        devices=cfg.hardware.devices,
        strategy=cfg.hardware.strategy,
        precision=cfg.hardware.precision,
        max_steps=cfg.optim.max_steps,
        max_time=timedelta(seconds=cfg.optim.max_time_s),
        val_check_interval=cfg.optim.val_every,
        check_val_every_n_epoch=None,
        limit_val_batches=cfg.optim.limit_val_batches,
        gradient_clip_val=cfg.optim.grad_clip,
        enable_progress_bar=False,  # the sweep prints one line per point; runners.train prints the result
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=logger,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        deterministic=True if cfg.hardware.accelerator == "cpu" else "warn",  # CUDA: warn where an op cannot be
    )


def run_training(cfg: DictConfig, *, logger: Any = False, progress: str | None = None) -> dict[str, Any]:
    """Train, validate and test one configuration; the status says how it ended.

    ``progress``: the console line this run belongs to; on a terminal it shows the step count while training.
    """
    check_precision(cfg.hardware)
    check_optim(OmegaConf.to_container(cfg.optim, resolve=True))
    attention = OmegaConf.to_container(cfg.attention, resolve=True)
    task: GeneratedTask = instantiate_task(cfg.task)
    name = attention["name"]
    cross = OmegaConf.to_container(cfg.cross_attention, resolve=True) if cfg.get("cross_attention") else None
    if cross is not None and not task.seq2seq:
        raise ConfigError(f"cross_attention is for sequence-to-sequence tasks (sort); {task.name} has no source")
    if cross is not None and not variants.get(cross["name"]).supports_cross:
        return {"status": "unsupported", "message": str(cannot_cross(cross["name"]))}
    if task.causal and not variants.get(name).supports_causal:
        return {
            "status": "unsupported",
            "message": f"{task.name} is causal and {name!r} cannot be causal; "
            f"variants that can: {', '.join(variants.causal_names())}",
        }
    if cfg.hardware.threads:
        torch.set_num_threads(cfg.hardware.threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    module = SequenceModel(
        model=OmegaConf.to_container(cfg.model, resolve=True),
        attention=attention,
        vocab_size=task.vocab_size,
        num_classes=task.num_classes,
        seq_len=task.seq_len,
        head=task.head,
        causal=task.causal,
        lr=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
        warmup_steps=cfg.optim.warmup_steps,
        max_steps=cfg.optim.max_steps,
        seq2seq=task.seq2seq,
        cross_attention=cross,
        byte_metrics=task.byte_metrics,
    )
    callbacks: list[pl.Callback] = [TrainThroughput(), LearningCurve()]
    target = cfg.optim.get("target_acc")
    if target is not None:  # stops at the first validation that reaches it (patience: never otherwise)
        callbacks.append(
            EarlyStopping(monitor="val_acc", mode="max", stopping_threshold=target, patience=10**9, check_finite=False)
        )
    if progress is not None:
        callbacks.append(ProgressLine(progress))
    trainer = build_trainer(cfg, logger=logger, callbacks=callbacks)
    start = time.perf_counter()
    trainer.fit(module, datamodule=task)
    train_time = time.perf_counter() - start
    steps = int(_metric(trainer, "steps") or trainer.global_step)
    curve = curve_rows(trainer)
    reached = target is not None and bool(curve) and curve[-1]["val_acc"] >= target and curve[-1]["step"] == steps
    result = {
        "steps": steps,
        "max_steps": cfg.optim.max_steps,
        "target_acc": target,
        "stopped_at_target": reached,  # steps < max_steps because validation reached optim.target_acc
        "params": sum(p.numel() for p in module.parameters()),
        "train_time_s": train_time,
        "val_acc": _metric(trainer, "val_acc"),
        "majority_baseline": task.majority_baseline(),
        "strategy": str(cfg.hardware.strategy),
        "world_size": int(_metric(trainer, "world_size") or 1),
        "train_tokens_per_s_per_device": _metric(trainer, "train_tokens_per_s_per_device"),
        "train_tokens_per_s_total": _metric(trainer, "train_tokens_per_s_total"),
        "learning_curve": curve,
        "loss_trace": module.loss_trace,  # this process's steps only (empty from ddp_spawn workers)
    }
    diverged_at = _metric(trainer, "diverged_at")
    if diverged_at is not None:
        return result | {"status": "diverged", "message": f"loss became NaN/inf at step {int(diverged_at)}"}
    if steps < cfg.optim.max_steps and not reached:
        return result | {
            "status": "timeout",
            "message": f"stopped by the safety cap optim.max_time_s={cfg.optim.max_time_s} after {steps} of "
            f"{cfg.optim.max_steps} steps; no final accuracy (raise the cap or lower optim.max_steps)",
        }
    tested = trainer.test(module, datamodule=task, verbose=False)[0]
    scores = {"test_acc": tested["test_acc"], "test_loss": tested["test_loss"]}
    if task.seq2seq:  # greedy generation on the test split; the cross variant the model chose
        scores |= {"test_exact_match": tested["test_exact_match"], "cross_attention": module.model.cross_attention}
    if task.byte_metrics:
        scores |= byte_scores(tested) | task.test_statistics() | task.identity()
    return result | {"status": "ok"} | scores | process_peak(cfg.hardware.accelerator)


def byte_scores(tested: dict[str, float]) -> dict[str, float]:
    """Bits per byte overall, per kind and per position stretch, and the in-context gain (Olsson et al. 2022:
    the loss near the start of a sequence minus the loss near its end; positive: the context helps)."""
    scores = {key: value for key, value in tested.items() if key.startswith("test_bpb")}
    positions = sorted((key for key in scores if key.startswith("test_bpb_pos")), key=lambda k: int(k[12:]))
    scores["in_context_gain_bits"] = scores[positions[0]] - scores[positions[-1]]
    return scores


def process_peak(accelerator: str) -> dict[str, float]:
    """The training process's peak memory: CUDA's allocator peak, else the process's resident high-water mark
    (interpreter, data and model included; with ``sweep.accuracy_jobs`` > 1 every run has a process of its own)."""
    if accelerator in ("gpu", "cuda") and torch.cuda.is_available():
        return {"train_peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20, "train_peak_memory_kind": "cuda"}
    return {
        "train_peak_memory_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "train_peak_memory_kind": "process RSS",
    }


def _metric(trainer: pl.Trainer, key: str) -> float | None:
    value = trainer.callback_metrics.get(key)
    return None if value is None else float(value)
