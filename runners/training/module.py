"""The LightningModule of an accuracy run: the shared skeleton plus loss, optimizer and accuracy."""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

import models
import variants
from models.encoder_decoder import encoder_layers
from tasks import IGNORE
from tasks.sort import BOS
from tasks.text import KINDS

POSITION_BUCKETS = 8  # loss by position: the sequence in this many equal stretches (the in-context gain's ends)


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
        seq2seq: bool = False,
        cross_attention: dict[str, Any] | None = None,
        byte_metrics: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        model, depth = encoder_layers(model)
        encoder = {"encoder_layers": depth, "cross_attention": cross_attention} if seq2seq else {}
        self.seq2seq = seq2seq
        self.model = models.Transformer(
            vocab_size=vocab_size,
            num_outputs=num_classes,
            max_seq_len=seq_len,
            attention=attention,
            head=head,
            causal=causal,
            **model,
            **encoder,
        )
        self.test_exact_match = MeanMetric()  # seq2seq: whole target right, by greedy generation
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, ignore_index=IGNORE, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, ignore_index=IGNORE, average="micro")
        # language modelling on text: bits per byte overall, per kind of byte (recall hit or not), per position
        self.byte_metrics = byte_metrics
        names = ["bpb", *(f"bpb_{kind}" for kind in KINDS), *(f"bpb_pos{i}" for i in range(POSITION_BUCKETS))]
        self.test_bits = torch.nn.ModuleDict({name: MeanMetric() for name in names}) if byte_metrics else None
        self.diverged_at: int | None = None
        self.loss_trace: list[tuple[int, float]] = []  # (step, loss) every 10 steps, for reports and tests

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # A mask with no padding carries no information; dropping it lets fused kernels run.
        return self.model(tokens, None if bool(mask.all()) else mask)

    def _loss(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.seq2seq:  # teacher forcing: the decoder reads BOS and the target shifted right
            source, source_mask, decoder_in, labels = batch
            logits = self.model(decoder_in, None, source, None if bool(source_mask.all()) else source_mask)
        else:
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
        if self.byte_metrics:
            self._score_bytes(batch)
            return
        if not self.seq2seq:
            self._score(batch, self.test_acc, "test")
            return
        source, source_mask, _, labels = batch  # scored by greedy generation, not teacher-forced
        predicted = self.greedy(source, None if bool(source_mask.all()) else source_mask, labels.shape[1])
        self.test_acc.update(predicted, labels)
        scored = labels != IGNORE
        self.test_exact_match.update(((predicted == labels) | ~scored).all(dim=1).float())
        self.log("test_acc", self.test_acc)
        self.log("test_exact_match", self.test_exact_match)
        self.log("test_loss", self._loss(batch)[0], sync_dist=True)

    def _score_bytes(self, batch) -> None:
        """Bits per byte of the test split: overall, on far and near recall hits and the other bytes
        (:mod:`tasks.text`), and in :data:`POSITION_BUCKETS` equal stretches of the sequence."""
        tokens, mask, labels, kinds = batch
        logits = self(tokens, mask)
        bits = F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), reduction="none") / math.log(2)
        bits = bits.view_as(labels)
        self.test_acc.update(logits.flatten(0, -2), labels.flatten())
        self.test_bits["bpb"].update(bits)
        for kind, code in KINDS.items():
            chosen = bits[kinds == code]
            if chosen.numel():
                self.test_bits[f"bpb_{kind}"].update(chosen)
        for index, stretch in enumerate(bits.chunk(POSITION_BUCKETS, dim=1)):
            self.test_bits[f"bpb_pos{index}"].update(stretch)
        self.log("test_acc", self.test_acc)
        self.log("test_loss", bits.mean() * math.log(2), sync_dist=True)
        for name, metric in self.test_bits.items():
            if metric.update_called:  # a split without far hits (windows shorter than `far`) has no such number
                self.log(f"test_{name}", metric)

    @torch.no_grad()
    def greedy(self, source: torch.Tensor, source_mask: torch.Tensor | None, length: int) -> torch.Tensor:
        """The target generated token by token ``(B, length)``: the encoder once, then one decoder step each."""
        start = torch.full((source.shape[0], 1), BOS, dtype=torch.long, device=source.device)
        logits, state = self.model.prefill(start, source, source_mask)
        tokens = [logits[:, -1].argmax(dim=-1)]
        for _ in range(length - 1):
            logits, state = self.model.step(tokens[-1], state)
            tokens.append(logits.argmax(dim=-1))
        return torch.stack(tokens, dim=1)

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: warmup_cosine(step, warmup_steps=hp.warmup_steps, total_steps=hp.max_steps),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
