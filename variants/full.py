"""Exact softmax attention through PyTorch's fused ``scaled_dot_product_attention``."""

from __future__ import annotations

import torch.nn.functional as F

import variants
from variants._masks import dense_allowed


@variants.register("full")
class FullAttention(variants.Attention):
    """Exact attention; PyTorch picks the fastest kernel (flash, memory-efficient, math).

    Rows with no allowed key (a padded query under causal left padding) give
    zeros, as PyTorch's kernels do.
    """

    supports_causal = True

    def attend(self, q, k, v, mask):
        if mask is None:
            # is_causal lets PyTorch use its fused causal kernels without a mask tensor.
            return F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout_p, is_causal=self.causal)
        allowed = dense_allowed(mask, q.shape[-2], causal=self.causal, device=q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=self.dropout_p)
