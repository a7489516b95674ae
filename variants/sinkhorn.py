"""Sparse Sinkhorn attention (Tay et al. 2020, "Sparse Sinkhorn Attention").

The sequence is cut into blocks of ``block`` tokens. A learned sorting network
scores every pair of blocks, ``R_IJ = (mean_q(I) W) . mean_k(J) / sqrt(d)``,
and ``sinkhorn_iters`` rounds of Sinkhorn balancing in log space (at
``temperature``) turn the scores into a doubly stochastic matrix ``S``, a soft
permutation of the blocks. Each query block then attends, in one softmax, to
its own block and to its sorted partner: the block ``sum_J S_IJ K_J`` (and the
same mixture of values). The variant owns the sorting network's ``W`` (one
``(Dh, Dh)`` matrix per head; the paper's is an MLP on block embeddings).

Time O(n b + (n/b)^2 (b d)) and memory O(n b): linear in n at a fixed block
size up to the small ``(n/b) x (n/b)`` sorting matrix.

Padding: padded tokens are zeroed before pooling and mixing, blocks with no
real token take no part in the balancing, own-block padded keys are masked, and
each sorted slot is renormalized over the real tokens it mixes (so rows of the
effective attention matrix sum to 1). Not causal: the sorting network pools whole blocks, future tokens
included (the paper's causal variant needs causal balancing, not implemented
here); ``build`` refuses ``causal=True``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import variants
from variants._recompute import recomputed


@variants.register("sinkhorn")
class SinkhornAttention(variants.Attention):
    """Own block + a Sinkhorn-sorted partner block per query block: O(n b)."""

    family = "learned"
    supports_causal = False
    budget = ("block", (8, 16, 32, 64, 128))

    def __init__(self, *, block: int = 64, sinkhorn_iters: int = 8, temperature: float = 0.75, **common) -> None:
        super().__init__(**common)
        variants.check_range("block", block, low=1)
        variants.check_range("sinkhorn_iters", sinkhorn_iters, low=0)
        variants.check_range("temperature", temperature, low=0.0, low_inclusive=False)
        self.block = block
        self.sinkhorn_iters = sinkhorn_iters
        self.temperature = temperature
        self.sort_proj = nn.Parameter(torch.randn(self.heads, self.dim_head, self.dim_head) / math.sqrt(self.dim_head))

    def sorting_matrix(self, q_blocks, k_blocks, block_ok):
        """``(B, H, nb, nb)`` doubly stochastic soft permutation of the blocks (rows: query blocks).

        ``q_blocks``/``k_blocks``: ``(B, H, nb, b, Dh)`` with padding zeroed; ``block_ok``: ``(B, 1, nb, b)``.
        Blocks without a real token get no weight and give none.
        """
        counts = block_ok.sum(dim=-1, keepdim=True).clamp_min(1)  # (B, 1, nb, 1)
        q_mean, k_mean = q_blocks.sum(dim=3) / counts, k_blocks.sum(dim=3) / counts  # (B, H, nb, Dh)
        scores = (q_mean @ self.sort_proj.to(q_mean.dtype)) @ k_mean.transpose(-1, -2)
        scores = scores.float() / (math.sqrt(self.dim_head) * self.temperature)
        real = block_ok.any(dim=-1)  # (B, 1, nb)
        pairs = real[..., :, None] & real[..., None, :]
        low = torch.finfo(scores.dtype).min
        scores = scores.masked_fill(~pairs, low)
        for _ in range(self.sinkhorn_iters):  # alternate column and row normalization, in log space
            scores = (scores - scores.logsumexp(dim=-2, keepdim=True)).masked_fill(~pairs, low)
            scores = (scores - scores.logsumexp(dim=-1, keepdim=True)).masked_fill(~pairs, low)
        return scores.softmax(dim=-1).masked_fill(~pairs, 0.0)  # rows: distributions over real blocks

    def attend(self, q, k, v, mask):
        # Recomputed in the backward pass: training keeps q, k, v, not the sorted key and value blocks.
        return recomputed(self._sorted_attention, q, k, v, mask, random=self.dropout_p > 0)

    def _sorted_attention(self, q, k, v, mask):
        batch, heads, seq, dim = q.shape
        b = self.block
        padded = seq + (-seq % b)
        nb = padded // b
        valid = torch.ones(batch, seq, dtype=torch.bool, device=q.device) if mask is None else mask
        valid = F.pad(valid, (0, padded - seq), value=False)
        padding = mask is not None or padded > seq
        if padding:  # padded tokens are zeros
            keep = valid[:, None, :, None].to(q.dtype)
            q, k, v = (F.pad(t, (0, 0, 0, padded - seq)) * keep for t in (q, k, v))
        q_blocks, k_blocks, v_blocks = (t.reshape(batch, heads, nb, b, dim) for t in (q, k, v))
        block_ok = valid.view(batch, 1, nb, b)
        sort = self.sorting_matrix(q_blocks, k_blocks, block_ok).to(q.dtype)  # (B, H, nb, nb)
        k_sorted = torch.einsum("bhij,bhjtd->bhitd", sort, k_blocks)
        v_sorted = torch.einsum("bhij,bhjtd->bhitd", sort, v_blocks)
        allowed = None
        if padding:
            # Each block's soft partner: slot t mixes the t-th tokens of all blocks, renormalized over the real
            # ones, so a slot's weight goes to real tokens only and every row of the attention matrix sums to 1.
            # (Without padding every slot's mass is a row sum of the doubly stochastic matrix: 1.)
            slot_mass = torch.einsum("bhij,bhjt->bhit", sort, block_ok.to(sort.dtype))  # (B, H, nb, b)
            scale = 1.0 / slot_mass.clamp_min(torch.finfo(slot_mass.dtype).tiny)[..., None]
            k_sorted, v_sorted = k_sorted * scale, v_sorted * scale
            allowed = torch.cat([block_ok.expand(-1, heads, -1, -1), slot_mass > 0], dim=-1)  # (B, H, nb, 2b)
            allowed = allowed | ~allowed.any(dim=-1, keepdim=True)  # a block of padding: any keys (all zero)
            allowed = allowed.reshape(batch, heads * nb, 1, 2 * b)
        keys = torch.cat([k_blocks, k_sorted], dim=3).view(batch, heads * nb, 2 * b, dim)
        values = torch.cat([v_blocks, v_sorted], dim=3).view(batch, heads * nb, 2 * b, dim)
        # One fused softmax attention per query block over its own block and its partner: no scores kept.
        out = F.scaled_dot_product_attention(
            q_blocks.reshape(batch, heads * nb, b, dim), keys, values, attn_mask=allowed, dropout_p=self.dropout_p
        )
        return out.view(batch, heads, padded, dim)[:, :, :seq]

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, block={self.block}, sinkhorn_iters={self.sinkhorn_iters}, "
            f"temperature={self.temperature}"
        )
