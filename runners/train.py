"""Accuracy: train the shared skeleton with one attention variant on one generated task.

    python -m runners.train task=mqar attention=full
    python -m runners.train task=listops attention=performer optim.max_time_s=120

A LightningModule around :class:`models.Transformer`: AdamW with linear
warm-up and cosine decay, gradient clipping, precision from the hardware
config, torchmetrics accuracy (token tasks score only labelled positions).
The run stops at ``optim.max_steps`` or ``optim.max_time_s``, whichever comes
first, then reports test accuracy. A NaN/inf loss ends the run with status
``diverged``; a causal task with a variant that cannot be causal is
``unsupported``. Neither raises.
"""

from __future__ import annotations

import math
import sys
import time
from datetime import timedelta
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only
from torchmetrics.classification import MulticlassAccuracy

import models
import variants
from runners.config import CONF_DIR, attention_dict
from runners.throughput import TrainThroughput
from tasks import GeneratedTask
from tasks.data import IGNORE


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class SequenceModel(pl.LightningModule):
    """The skeleton plus loss, optimizer and accuracy for one task."""

    def __init__(
        self,
        *,
        model: dict[str, Any],
        attention: dict[str, Any],
        vocab_size: int,
        num_classes: int,
        seq_len: int,
        head: str,
        causal: bool,
        lr: float,
        weight_decay: float,
        warmup_steps: int,
        max_steps: int,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = models.Transformer(
            vocab_size=vocab_size,
            num_outputs=num_classes,
            max_seq_len=seq_len,
            attention=attention,
            head=head,
            causal=causal,
            **model,
        )
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, ignore_index=IGNORE, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, ignore_index=IGNORE, average="micro")
        self.diverged_at: int | None = None
        self.loss_trace: list[tuple[int, float]] = []  # (step, loss) every 10 steps, for reports and tests

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # A mask with no padding carries no information; dropping it lets fused kernels run.
        return self.model(tokens, None if bool(mask.all()) else mask)

    def _loss(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tokens, mask, labels = batch
        logits = self(tokens, mask)
        loss = F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=IGNORE)
        return loss, logits, labels

    def training_step(self, batch, batch_idx: int):
        loss, _, _ = self._loss(batch)
        if not torch.isfinite(loss):
            self.diverged_at = self.global_step
            self.trainer.callback_metrics["diverged_at"] = torch.tensor(float(self.global_step))  # survives ddp_spawn
            self.trainer.should_stop = True
            return None  # skip this optimizer step
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        if self.global_step % 10 == 0:
            self.loss_trace.append((self.global_step, loss.item()))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        for module in self.model.modules():
            if isinstance(module, variants.Attention):
                module.on_train_step(self.global_step)

    def _score(self, batch, metric: MulticlassAccuracy, prefix: str) -> None:
        loss, logits, labels = self._loss(batch)
        metric.update(logits.flatten(0, -2), labels.flatten())
        self.log(f"{prefix}_loss", loss, prog_bar=prefix == "val", sync_dist=True)
        self.log(f"{prefix}_acc", metric, prog_bar=prefix == "val")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._score(batch, self.val_acc, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._score(batch, self.test_acc, "test")

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: warmup_cosine(step, warmup_steps=hp.warmup_steps, total_steps=hp.max_steps),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def build_trainer(cfg: DictConfig, *, logger: Any = False, callbacks: list[pl.Callback] | None = None) -> pl.Trainer:
    """A Trainer from the optim and hardware configs (``hardware.strategy``: auto, ddp, ddp_spawn, ...)."""
    return pl.Trainer(
        callbacks=callbacks,
        accelerator=cfg.hardware.accelerator,
        devices=cfg.hardware.devices,
        strategy=cfg.hardware.get("strategy", "auto"),
        precision=cfg.hardware.precision,
        max_steps=cfg.optim.max_steps,
        max_time=timedelta(seconds=cfg.optim.max_time_s),
        val_check_interval=cfg.optim.val_every,
        check_val_every_n_epoch=None,
        limit_val_batches=cfg.optim.get("limit_val_batches", 1.0),
        gradient_clip_val=cfg.optim.grad_clip,
        enable_progress_bar=sys.stderr.isatty(),
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=logger,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
    )


def run_training(cfg: DictConfig, *, logger: Any = False) -> dict[str, Any]:
    """Train, validate and test one configuration; the status says how it ended."""
    attention = attention_dict(cfg)
    task: GeneratedTask = hydra.utils.instantiate(cfg.task)
    name = attention["name"]
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
    )
    trainer = build_trainer(cfg, logger=logger, callbacks=[TrainThroughput()])
    start = time.perf_counter()
    trainer.fit(module, datamodule=task)
    train_time = time.perf_counter() - start
    result = {
        "steps": int(_metric(trainer, "steps") or trainer.global_step),
        "train_time_s": train_time,
        "val_acc": _metric(trainer, "val_acc"),
        "majority_baseline": task.majority_baseline(),
        "strategy": str(cfg.hardware.get("strategy", "auto")),
        "world_size": int(_metric(trainer, "world_size") or 1),
        "train_tokens_per_s_per_device": _metric(trainer, "train_tokens_per_s_per_device"),
        "train_tokens_per_s_total": _metric(trainer, "train_tokens_per_s_total"),
        "loss_trace": module.loss_trace,  # this process's steps only (empty from ddp_spawn workers)
    }
    diverged_at = _metric(trainer, "diverged_at")
    if diverged_at is not None:
        return result | {"status": "diverged", "message": f"loss became NaN/inf at step {int(diverged_at)}"}
    tested = trainer.test(module, datamodule=task, verbose=False)[0]
    return result | {"status": "ok", "test_acc": tested["test_acc"], "test_loss": tested["test_loss"]}


def _metric(trainer: pl.Trainer, key: str) -> float | None:
    value = trainer.callback_metrics.get(key)
    return None if value is None else float(value)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> dict[str, Any]:
    result = run_training(cfg)
    if rank_zero_only.rank == 0:  # under ddp every rank runs this script
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items() if k != "loss_trace"})
    return result


if __name__ == "__main__":
    main()
