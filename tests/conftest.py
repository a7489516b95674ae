"""Shared fixtures: small, seeded inputs and a builder with test-sized defaults."""

from __future__ import annotations

import pytest
import torch

import variants

HEADS = 2
DIM_HEAD = 16
MAX_SEQ_LEN = 4096


def build_variant(name: str, **overrides) -> variants.Attention:
    """Build ``name`` at test size with its default hyperparameters."""
    kwargs = {"heads": HEADS, "dim_head": DIM_HEAD, "max_seq_len": MAX_SEQ_LEN} | overrides
    return variants.build(name, **kwargs)


def qkv(batch: int, seq: int, *, seed: int = 0, scale: float = 1.0, requires_grad: bool = False):
    """Seeded ``(B, H, N, Dh)`` q, k, v."""
    gen = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(batch, HEADS, seq, DIM_HEAD, generator=gen) * scale for _ in range(3)]
    for t in tensors:
        t.requires_grad_(requires_grad)
    return tensors


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
