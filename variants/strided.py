"""Sparse Transformer, fixed pattern (Child et al. 2019, "Generating Long Sequences with Sparse Transformers").

LRA's "Sparse Trans.". The sequence is cut into blocks of ``block`` tokens; a
query attends to every token of its own block (A1) and to the last ``summary``
tokens of every block (A2, the "summary" cells that carry each block's content
to the rest of the sequence); causally, to those that precede it. Both
patterns share one softmax, as in the paper's merged heads.

Cost: ``block + summary * n / block`` keys per query, so O(n (l + c n / l))
time: quadratic with a small constant ``c / l`` at a fixed block size, and
O(n sqrt(n)) when ``block`` grows like ``sqrt(n)``, as in the paper. Memory is
O(n) in training through the blocked kernel of :mod:`variants._blocks`: the
summary keys are its global keys (gathered once per pass), never a dense mask.
"""

from __future__ import annotations

import torch

import variants
from variants._blocks import BlockLayout, blocked_attention, key_validity


@variants.register("strided")
class StridedAttention(variants.Attention):
    """Own block + the last ``summary`` tokens of every block, one softmax (Sparse Transformer "fixed")."""

    family = "sparse"
    supports_causal = True
    budget = ("summary", (1, 2, 4, 8, 16, 32))

    def __init__(self, *, block: int = 64, summary: int = 8, **common) -> None:
        super().__init__(**common)
        variants.check_range("block", block, low=1)
        variants.check_range("summary", summary, low=0, high=block)
        self.block = block
        self.summary = summary

    def summary_positions(self, seq: int, device: torch.device) -> torch.Tensor:
        """Positions ``j < seq`` with ``j mod block >= block - summary``, ascending."""
        positions = torch.arange(seq, device=device)
        return positions[positions % self.block >= self.block - self.summary]

    def dense_pattern(self, seq: int) -> torch.Tensor:
        """The ``(seq, seq)`` bool matrix of allowed query->key links, for tests and plots."""
        i, j = torch.arange(seq)[:, None], torch.arange(seq)[None, :]
        allowed = (i // self.block == j // self.block) | (j % self.block >= self.block - self.summary)
        return allowed & (j <= i) if self.causal else allowed

    def layout(self, seq: int, mask: torch.Tensor | None, device: torch.device) -> BlockLayout:
        """One slot (the query's own block); the summary tokens are the kernel's global keys."""
        b = self.block
        padded = seq + (-seq % b)
        nb = padded // b
        summary = self.summary_positions(seq, device)
        return BlockLayout(
            block=b,
            index=torch.arange(nb, device=device)[:, None],
            key_ok=key_validity(mask, seq, padded, device),
            causal_slot=0 if self.causal else None,
            num_global=summary.numel(),
            global_ok=None if mask is None else mask[:, summary],
            global_queries=False,
            global_keys=summary,
        )

    def attend(self, q, k, v, mask):
        return blocked_attention(q, k, v, self.layout(q.shape[2], mask, q.device), dropout_p=self.dropout_p)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, block={self.block}, summary={self.summary}"
