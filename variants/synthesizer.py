"""Synthesizer (Tay et al. 2021, "Synthesizer: Rethinking Self-Attention in Transformer Models").

Attention weights without query-key dot products:

- ``mode="dense"``: each token synthesizes its own row of logits over the
  ``max_seq_len`` positions with a two-layer MLP, ``W2 relu(W1 x_i + b1) + b2``.
  The contract hands a variant ``q, k, v`` only, so ``x_i`` is the token's query
  and key concatenated (``[q_i; k_i]``, both linear maps of the token, so a
  learned ``W1`` on them is as general as the paper's on the token itself); no
  query-key products are formed.
- ``mode="random"``: one learned ``(max_seq_len, max_seq_len)`` logit matrix
  per head, the same for every input (q and k are not used at all).

Rows are softmax-normalized over the first ``n`` positions, masked for padding
and (causally) for the future. **Quadratic by design**: every weight of the
``(n, n)`` matrix is formed, O(n^2) time and memory; the variant exists to ask
whether dot-product attention is needed at all, not to save memory. Fixed
length: the parameters are sized by ``max_seq_len``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import variants
from variants._masks import dense_allowed

MODES = ("dense", "random")


@variants.register("synthesizer")
class SynthesizerAttention(variants.Attention):
    """Dense (per-token MLP) or random (learned matrix) synthetic attention: O(n^2), fixed length."""

    family = "learned"
    supports_causal = True
    needs_max_seq_len = True

    def __init__(self, *, mode: str = "dense", hidden: int = 64, **common) -> None:
        super().__init__(**common)
        if mode not in MODES:
            raise variants.HyperparameterError(f"mode={mode!r} is unknown; choose one of {', '.join(MODES)}")
        variants.check_range("hidden", hidden, low=1)
        self.mode = mode
        self.hidden = hidden
        heads, n = self.heads, self.max_seq_len
        if mode == "dense":
            self.w1 = nn.Parameter(torch.randn(heads, 2 * self.dim_head, hidden) / math.sqrt(2 * self.dim_head))
            self.b1 = nn.Parameter(torch.zeros(heads, 1, hidden))
            self.w2 = nn.Parameter(torch.randn(heads, hidden, n) / math.sqrt(hidden))
            self.b2 = nn.Parameter(torch.zeros(heads, 1, n))
        else:
            self.logits = nn.Parameter(torch.randn(heads, n, n) / math.sqrt(n))

    def synthesized_logits(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """``(B|1, H, n, n)`` logits of the first ``n`` positions."""
        seq = q.shape[2]
        if self.mode == "random":
            return self.logits[None, :, :seq, :seq].to(q.dtype)
        tokens = torch.cat([q, k], dim=-1)  # (B, H, n, 2 Dh): the token as the contract gives it
        hidden = F.relu(tokens @ self.w1.to(q.dtype) + self.b1.to(q.dtype))  # (B, H, n, hidden)
        return hidden @ self.w2[..., :seq].to(q.dtype) + self.b2[..., :seq].to(q.dtype)

    def attend(self, q, k, v, mask):
        logits = self.synthesized_logits(q, k)
        allowed = dense_allowed(mask, q.shape[2], causal=self.causal, device=q.device)
        if allowed is not None:  # a finite fill keeps fully masked rows NaN-free
            logits = logits.masked_fill(~allowed, torch.finfo(logits.dtype).min)
        probs = logits.float().softmax(dim=-1).to(v.dtype)
        if allowed is not None:
            probs = probs.masked_fill(~allowed, 0.0)
        return F.dropout(probs, p=self.dropout_p) @ v

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mode={self.mode}, hidden={self.hidden}"
