"""Progress inside one long training run, on the sweep's own line: ``[5/30] ... step 1,200/5,000``.

Only on a terminal: a log file or CI output gets the one finished line per
point and nothing else. Rewrites the line at most once a second.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import pytorch_lightning as pl


class ProgressLine(pl.Callback):
    """Writes ``\\r{prefix} step k/N`` to ``stream`` while training, then restores ``{prefix}``."""

    def __init__(self, prefix: str, *, stream: TextIO | None = None, every_s: float = 1.0) -> None:
        self.prefix = prefix
        self._stream = stream  # None: sys.stderr, looked up when writing (a stream cannot go to ddp_spawn workers)
        self.every_s = every_s
        self._last = 0.0
        self._width = 0

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stderr

    def _active(self, trainer: pl.Trainer) -> bool:
        return trainer.is_global_zero and self.stream.isatty()

    def _write(self, text: str) -> None:
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)

    def on_train_batch_end(self, trainer: pl.Trainer, *_: Any) -> None:
        now = time.monotonic()
        if self._active(trainer) and now - self._last >= self.every_s:
            self._last = now
            self._write(f"{self.prefix} step {trainer.global_step:,}/{trainer.max_steps:,}")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._active(trainer) and self._width:
            self._write(self.prefix)
            self.stream.write("\r" + self.prefix)
            self.stream.flush()
