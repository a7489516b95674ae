"""Mask helpers shared by variants that build (part of) an attention matrix."""

from __future__ import annotations

import torch


def dense_allowed(mask: torch.Tensor | None, seq: int, *, causal: bool, device: torch.device) -> torch.Tensor | None:
    """Bool ``(B|1, 1, N, N)`` matrix of allowed query->key pairs, or None if all are.

    Combines the key padding mask (``(B, N)``, True = real token) with the
    causal triangle. Only exact (quadratic) variants should call this.
    """
    allowed = None
    if causal:
        allowed = torch.ones(seq, seq, dtype=torch.bool, device=device).tril()[None, None]
    if mask is not None:
        keys = mask[:, None, None, :]  # (B, 1, 1, N)
        allowed = keys if allowed is None else allowed & keys
    return allowed
