"""Longformer: sliding-window attention plus global tokens (Beltagy et al. 2020).

The window is blocked like ``local``'s (chunks of ``window`` tokens; a query
sees its chunk and the neighbouring ones, so at least ``window`` keys on each
side), and the first ``num_global`` tokens are global: every token attends to
them and, bidirectionally, they attend to every token. O(n (w + g)) time and
O(n) memory through the blocked kernel of :mod:`variants._blocks`.

Causal: the window is causal and the global tokens stay visible as keys to every
later token (they precede it); global *queries* attend to the whole sequence
only bidirectionally, since that would read the future. So the causal variant is
"causal sliding window + global prefix keys".
"""

from __future__ import annotations

import torch

import variants
from variants._blocks import BlockLayout, blocked_attention, key_validity


@variants.register("longformer")
class LongformerAttention(variants.Attention):
    """Sliding window of ``window``-sized chunks plus ``num_global`` global tokens: O(n (w + g))."""

    family = "sparse"
    supports_causal = True
    budget = ("window", (8, 16, 32, 64, 128, 256))

    def __init__(self, *, window: int = 128, num_global: int = 16, **common) -> None:
        super().__init__(**common)
        variants.check_range("window", window, low=1)
        variants.check_range("num_global", num_global, low=0)
        self.window = window
        self.num_global = num_global
        self.offsets = (-1, 0) if self.causal else (-1, 0, 1)  # key chunks relative to the query's chunk

    def layout(self, seq: int, mask: torch.Tensor | None, device: torch.device) -> BlockLayout:
        """Window slots like ``local``'s; the kernel appends the global keys to every window."""
        w, g = self.window, min(self.num_global, seq)
        padded = seq + (-seq % w)
        nb = padded // w
        blocks = torch.arange(nb, device=device)[:, None] + torch.tensor(self.offsets, device=device)
        real_keys = key_validity(mask, seq, padded, device)
        return BlockLayout(
            block=w,
            index=blocks.clamp(0, nb - 1),
            slot_ok=(blocks >= 0) & (blocks < nb),
            key_ok=real_keys,
            causal_slot=self.offsets.index(0) if self.causal else None,
            num_global=g,
            global_ok=None if mask is None else mask[:, :g],
            real_keys=real_keys,
            global_queries=not self.causal,
        )

    def attend(self, q, k, v, mask):
        return blocked_attention(q, k, v, self.layout(q.shape[2], mask, q.device), dropout_p=self.dropout_p)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window={self.window}, num_global={self.num_global}"
