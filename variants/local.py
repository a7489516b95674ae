"""Sliding-window attention, blocked so that time and memory grow linearly in length.

The sequence is cut into chunks of ``window`` tokens. A query attends to its own
chunk and one chunk on either side (bidirectional), or to the chunk behind it
and its own chunk up to itself (causal): at least ``window`` keys on each side
it may look at, at most ``2 * window - 1``. This is the scheme of
``local-attention`` (lucidrains) and of Longformer's banded attention
(Beltagy et al. 2020) in chunked form.

The keys a chunk sees are one contiguous span of the sequence, so on CPU each
chunk is one call of PyTorch's fused flash kernel on views (:mod:`variants._spans`).
The generic blocked kernel (:mod:`variants._blocks`, which gathers windows) serves
a key-padding mask, attention dropout and other devices.
"""

from __future__ import annotations

import torch

import variants
from variants import _spans as spans
from variants._blocks import BlockLayout, blocked_attention, key_validity
from variants._decoding import append_to_cache, cache_from_prompt, empty_cache, softmax_over_cache


@variants.register("local")
class LocalAttention(variants.Attention):
    """Each query sees the neighbouring ``window``-sized chunks: O(n * window) time, O(n) memory."""

    family = "sparse"
    supports_causal = True
    supports_decoding = True  # a window cache: at most 2 * window keys
    budget = ("window", (8, 16, 32, 64, 128, 256))

    def __init__(self, *, window: int = 128, **common) -> None:
        super().__init__(**common)
        variants.check_range("window", window, low=1)
        self.window = window
        self.offsets = (-1, 0) if self.causal else (-1, 0, 1)  # key chunks relative to the query's chunk

    def layout(self, num_blocks: int, key_ok: torch.Tensor | None, device: torch.device) -> BlockLayout:
        """Slots: the chunk before, the query's own chunk, and (bidirectional) the chunk after."""
        blocks = torch.arange(num_blocks, device=device)[:, None] + torch.tensor(self.offsets, device=device)
        return BlockLayout(
            block=self.window,
            index=blocks.clamp(0, num_blocks - 1),
            slot_ok=(blocks >= 0) & (blocks < num_blocks),
            key_ok=key_ok,
            causal_slot=self.offsets.index(0) if self.causal else None,
        )

    def attend(self, q, k, v, mask):
        if mask is None and self.dropout_p == 0 and spans.available(q):
            return spans.span_attention(q, k, v, window=self.window, causal=self.causal)
        seq = q.shape[2]
        w = self.window
        padded = seq + (-seq % w)
        layout = self.layout(padded // w, key_validity(mask, seq, padded, q.device), q.device)
        return blocked_attention(q, k, v, layout, dropout_p=self.dropout_p)

    def visible(self, position: int) -> int:
        """How many keys the causal query at ``position`` sees: its chunk up to itself and the chunk before."""
        start = max(0, (position // self.window - 1) * self.window)
        return position - start + 1

    def init_state(self, batch, *, device="cpu", dtype=torch.float32):
        self._check_decoding()
        return empty_cache(batch, self.heads, self.dim_head, device, dtype)

    def decode_step(self, q, k, v, state):
        state = append_to_cache(state, k, v, keep=self.visible(int(state["position"])))
        return softmax_over_cache(q, state, fused=True), state

    def prefill(self, q, k, v):
        self._check_decoding()
        return self(q, k, v), cache_from_prompt(k, v, keep=self.visible(q.shape[2] - 1))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window={self.window}"
