"""Linformer: low-rank attention (Wang et al. 2020, "Linformer: Self-Attention with Linear Complexity").

Keys and values are projected along the sequence axis from ``n`` rows to ``k``
rows by learned ``(k, max_seq_len)`` matrices, so attention costs O(n k).
Projections are shared across heads (the paper's headwise sharing) and, with
``share_kv=True``, between keys and values. Shorter inputs use the first ``n``
columns; padded keys and values are zeroed before the projection so that they
contribute nothing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import variants


@variants.register("linformer")
class LinformerAttention(variants.Attention):
    """Softmax attention over ``k`` learned mixtures of the keys: O(n k)."""

    family = "low-rank"
    supports_causal = False
    normalized_rows = False  # softmax over k mixtures of keys: the weights on the keys themselves are signed
    budget = ("k", (8, 16, 32, 64, 128, 256))
    needs_max_seq_len = True
    supports_cross = True  # projects the keys and values alone: the queries may be of another length

    def __init__(self, *, k: int = 256, share_kv: bool = False, **common) -> None:
        super().__init__(**common)
        variants.check_range("k", k, low=1, high=self.max_seq_len)
        self.k = k
        self.share_kv = share_kv
        self.proj_k = nn.Parameter(self._init_projection(k, self.max_seq_len))
        self.proj_v = None if share_kv else nn.Parameter(self._init_projection(k, self.max_seq_len))

    @staticmethod
    def _init_projection(rows: int, cols: int) -> torch.Tensor:
        # Uniform(-1/sqrt(k), 1/sqrt(k)) as in the reference implementation.
        bound = 1.0 / math.sqrt(rows)
        return torch.empty(rows, cols).uniform_(-bound, bound)

    def attend(self, q, k, v, mask):
        k_low, v_low = self.project(k, v, mask)
        return F.scaled_dot_product_attention(q, k_low, v_low, dropout_p=self.dropout_p)

    def project(self, k, v, mask):
        """The ``k`` learned mixtures of the keys and of the values ``(B, H, k, Dh)``, padded rows zeroed first."""
        seq = k.shape[2]  # the keys' length (cross-attention: the source's)
        if mask is not None:
            keep = mask[:, None, :, None].to(k.dtype)  # (B, 1, M, 1)
            k, v = k * keep, v * keep
        proj_k = self.proj_k[:, :seq]
        proj_v = proj_k if self.proj_v is None else self.proj_v[:, :seq]
        return proj_k.to(k.dtype) @ k, proj_v.to(v.dtype) @ v  # (k, M) @ (B, H, M, Dh) -> (B, H, k, Dh)

    def cross_state(self, k, v, mask=None):
        """The source's keys and values projected once: ``2 x k x Dh`` per head whatever M is."""
        self._check_cross()
        self._check_inputs(k[:, :, :1], k, v, mask)
        k_low, v_low = self.project(k, v, mask)
        return {"k_low": k_low, "v_low": v_low}

    def cross_step(self, q, state):
        self._check_cross()
        return F.scaled_dot_product_attention(q, state["k_low"].to(q.dtype), state["v_low"].to(q.dtype))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, k={self.k}, share_kv={self.share_kv}"
