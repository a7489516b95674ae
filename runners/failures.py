"""How a failed point is named: one classification for in-process and isolated measurements."""

from __future__ import annotations

import torch

import variants


class PointFailed(Exception):
    """A point that failed where it ran (e.g. in its own subprocess), carrying the status it earned there."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def classify_failure(error: BaseException) -> str:
    """``oom``, ``diverged``, ``unsupported``, ``timeout`` or ``error``: what the report shows for the point."""
    if isinstance(error, PointFailed):
        return error.status
    text = str(error).lower()
    if isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in text or "can't allocate" in text:
        return "oom"
    if isinstance(error, FloatingPointError):
        return "diverged"
    if isinstance(error, variants.AttentionError) or text.startswith("unsupported"):
        return "unsupported"
    return "error"
