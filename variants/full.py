"""Exact softmax attention through PyTorch's fused ``scaled_dot_product_attention``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import variants
from variants._decoding import append_to_cache, cache_from_prompt, empty_cache, softmax_over_cache
from variants._masks import dense_allowed


@variants.register("full")
class FullAttention(variants.Attention):
    """Exact attention; PyTorch picks the fastest kernel (flash, memory-efficient, math).

    Rows with no allowed key (a padded query under causal left padding) give
    zeros, as PyTorch's kernels do. Decoding keeps a KV cache that grows with n.
    """

    family = "exact"
    supports_causal = True
    supports_decoding = True  # a KV cache: every key and value so far
    supports_cross = True  # queries over keys of another length: the same softmax, rectangular

    def attend(self, q, k, v, mask):
        if mask is None:
            # is_causal lets PyTorch use its fused causal kernels without a mask tensor.
            return F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout_p, is_causal=self.causal)
        allowed = dense_allowed(mask, q.shape[-2], causal=self.causal, device=q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=self.dropout_p)

    def init_state(self, batch, *, device="cpu", dtype=torch.float32):
        self._check_decoding()
        return empty_cache(batch, self.heads, self.dim_head, device, dtype)

    def decode_step(self, q, k, v, state):
        state = append_to_cache(state, k, v)
        return softmax_over_cache(q, state, fused=True), state

    def prefill(self, q, k, v):
        self._check_decoding()
        return self(q, k, v), cache_from_prompt(k, v)
