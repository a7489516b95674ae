"""Training throughput per device and in total, for single-device and DDP runs alike.

Each process times its own optimizer steps (forward, backward, optimizer; the
data loader's wait and validation excluded) after a few warm-up steps. At the
end of fit the per-process token counts and times are summed across processes
through the strategy, so the total is the sum of what every device really did
rather than one device's rate times the world size.
"""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
import torch


class TrainThroughput(pl.Callback):
    """Puts tokens/s per device and in total, ``world_size`` and ``steps`` in callback_metrics.

    They travel back from ``ddp_spawn`` workers with the other callback
    metrics; read them right after ``trainer.fit``.
    """

    def __init__(self, warmup_steps: int = 3) -> None:
        self.warmup_steps = warmup_steps
        self._seen = 0
        self._tokens = 0
        self._seconds = 0.0
        self._started: float | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *_: Any) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, *_: Any) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        elapsed = time.perf_counter() - (self._started or time.perf_counter())
        self._seen += 1
        if self._seen > self.warmup_steps:
            self._tokens += batch[0].numel()
            self._seconds += elapsed

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        local_rate = self._tokens / self._seconds if self._seconds > 0 else 0.0
        # float64 on the module's device: gloo (CPU) and NCCL (CUDA) both reduce it
        rate = torch.tensor([local_rate, 1.0], dtype=torch.float64, device=pl_module.device)
        total = trainer.strategy.reduce(rate, reduce_op="sum")
        world = round(float(total[1]))
        trainer.callback_metrics["train_tokens_per_s_total"] = total[0].detach().cpu().float()
        trainer.callback_metrics["train_tokens_per_s_per_device"] = (total[0] / world).detach().cpu().float()
        trainer.callback_metrics["world_size"] = torch.tensor(float(world))
        trainer.callback_metrics["steps"] = torch.tensor(float(trainer.global_step))  # ddp_spawn: not sent back
