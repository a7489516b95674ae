"""Sliding-window attention, blocked so that time and memory grow linearly in length.

The sequence is cut into chunks of ``window`` tokens. A query attends to its own
chunk and one chunk on either side (bidirectional), or to the chunk behind it
and its own chunk up to itself (causal): at least ``window`` keys on each side
it may look at, at most ``2 * window - 1``. This is the scheme of
``local-attention`` (lucidrains) and of Longformer's banded attention
(Beltagy et al. 2020) in chunked form.
"""

from __future__ import annotations

import torch

import variants
from variants._blocks import (
    blocked_softmax_attention,
    key_validity,
    masked_fill_disallowed,
    neighbour_blocks,
    pad_to_multiple,
    scale_keys,
)


@variants.register("local")
class LocalAttention(variants.Attention):
    """Each query sees the neighbouring ``window``-sized chunks: O(n * window)."""

    supports_causal = True

    def __init__(self, *, window: int = 128, **common) -> None:
        super().__init__(**common)
        variants.check_range("window", window, low=1)
        self.window = window
        self.before, self.after = 1, (0 if self.causal else 1)
        # (w, keys) position test for the causal triangle inside a query's own chunk.
        w = window
        query_pos = torch.arange(w)[:, None] + w * self.before
        key_pos = torch.arange((self.before + 1 + self.after) * w)[None, :]
        self.register_buffer("order_ok", key_pos <= query_pos if self.causal else None, persistent=False)

    def attend(self, q, k, v, mask):
        batch, heads, seq, dim_head = q.shape
        w = self.window
        padded = seq + (-seq % w)
        nb = padded // w
        q_blocks, k_blocks, v_blocks = (
            pad_to_multiple(t, w, dim=2).view(batch, heads, nb, w, dim_head) for t in (q, scale_keys(k), v)
        )
        near = {"dim": 2, "before": self.before, "after": self.after}
        k_windows = neighbour_blocks(k_blocks, **near)  # (B, H, nb, K, Dh)
        v_windows = neighbour_blocks(v_blocks, **near)
        if mask is None and padded == seq:
            mask_scores = self._mask_structure  # only the edge blocks and the causal triangle
        else:
            valid = key_validity(mask, seq, padded, q.device).view(-1, nb, w)
            allowed = neighbour_blocks(valid, dim=1, before=self.before, after=self.after, fill=False)
            allowed = allowed[:, None, :, None, :]  # (B|1, 1, nb, 1, K)
            if self.order_ok is not None:
                allowed = allowed & self.order_ok  # (B|1, 1, nb, w, K)
            mask_scores = masked_fill_disallowed(allowed)
        out = blocked_softmax_attention(
            q_blocks, k_windows, v_windows, mask_scores=mask_scores, dropout_p=self.dropout_p
        )
        return out.reshape(batch, heads, padded, dim_head)[:, :, :seq]

    def _mask_structure(self, scores: torch.Tensor) -> None:
        """Mask what every input shares, touching only the slices concerned."""
        w, low = self.window, torch.finfo(scores.dtype).min
        scores[:, :, 0, :, : self.before * w] = low  # nothing before the first block
        if self.after:
            scores[:, :, -1, :, -self.after * w :] = low  # nothing after the last block
        if self.order_ok is not None:
            own = scores[..., self.before * w : (self.before + 1) * w]  # the query's own block
            own.masked_fill_(~self.order_ok[:, self.before * w : (self.before + 1) * w], low)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window={self.window}"
