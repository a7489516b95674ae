"""Textbook ``softmax(Q K^T / sqrt(d)) V``: the reference every variant is tested against."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import variants
from variants._decoding import append_to_cache, cache_from_prompt, empty_cache, softmax_over_cache
from variants._masks import dense_allowed


def softmax_attention_probs(q: torch.Tensor, k: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """Attention probabilities ``(B, H, N, N)``; rows with no allowed key are all zeros."""
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, H, N, N)
    if allowed is None:
        return scores.softmax(dim=-1)
    # A finite fill keeps fully masked rows NaN-free; zeroing afterwards removes their weight.
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    return scores.softmax(dim=-1).masked_fill(~allowed, 0.0)


@variants.register("full_math")
class FullMathAttention(variants.Attention):
    """Materializes the attention matrix: O(N^2) memory, but every weight is visible.

    Set ``keep_probs=True`` (or call :meth:`attention_probs`) to get the
    weights for plotting.
    """

    family = "exact"
    supports_causal = True
    supports_decoding = True  # a KV cache: every key and value so far
    supports_cross = True  # queries over keys of another length: the same softmax, rectangular

    def __init__(self, *, keep_probs: bool = False, **common) -> None:
        super().__init__(**common)
        self.keep_probs = keep_probs
        self.last_probs: torch.Tensor | None = None

    def attention_probs(self, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The ``(B, H, N, N)`` attention weights this module would use."""
        self._check_inputs(q, k, k, mask)
        return softmax_attention_probs(q, k, dense_allowed(mask, q.shape[-2], causal=self.causal, device=q.device))

    def attend(self, q, k, v, mask):
        probs = softmax_attention_probs(q, k, dense_allowed(mask, q.shape[-2], causal=self.causal, device=q.device))
        if self.keep_probs:
            self.last_probs = probs.detach()
        return F.dropout(probs, p=self.dropout_p) @ v  # (B, H, N, Dh)

    def init_state(self, batch, *, device="cpu", dtype=torch.float32):
        self._check_decoding()
        return empty_cache(batch, self.heads, self.dim_head, device, dtype)

    def decode_step(self, q, k, v, state):
        state = append_to_cache(state, k, v)
        return softmax_over_cache(q, state, fused=False), state

    def prefill(self, q, k, v):
        self._check_decoding()
        return self(q, k, v), cache_from_prompt(k, v)
