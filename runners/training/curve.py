"""The learning curve of a run: validation accuracy and loss at every evaluation, with steps and time.

Kept in every accuracy record so that "faster to train" can be measured as
steps and seconds to reach an accuracy, not guessed from throughput. Time is
counted two ways: ``train_s``, the time spent in training steps only (what a
faster variant saves), and ``wall_s``, since the run started (validation
included).
"""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
import torch

CURVE_KEY = "learning_curve"
CURVE_FIELDS = ("step", "wall_s", "train_s", "val_acc", "val_loss")


class LearningCurve(pl.Callback):
    """Appends one row per validation to ``trainer.callback_metrics[CURVE_KEY]`` (a tensor, so it survives
    ``ddp_spawn``: workers send callback metrics back to the launching process)."""

    def __init__(self) -> None:
        self.rows: list[list[float]] = []
        self._started = 0.0
        self._train_s = 0.0
        self._step_started = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: Any) -> None:
        self._step_started = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: Any) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self._train_s += time.perf_counter() - self._step_started

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        wall = time.perf_counter() - self._started
        row = [trainer.global_step, wall, self._train_s, float(metrics["val_acc"]), float(metrics["val_loss"])]
        self.rows.append(row)
        trainer.callback_metrics[CURVE_KEY] = torch.tensor(self.rows, dtype=torch.float64)


def curve_rows(trainer: pl.Trainer) -> list[dict[str, float]]:
    """The curve after ``trainer.fit``, as one dict per evaluation (empty if the run never validated)."""
    table = trainer.callback_metrics.get(CURVE_KEY)
    if table is None:
        return []
    rows = [dict(zip(CURVE_FIELDS, row, strict=True)) for row in table.tolist()]
    return [row | {"step": int(row["step"])} for row in rows]
