"""cosFormer (Qin et al. 2022, "cosFormer: Rethinking Softmax in Attention").

Linear attention with ReLU features and a cos-based re-weighting that favours
nearby tokens: ``w_ij = relu(q_i) . relu(k_j) * cos(pi/2 * (i - j) / M)``.
Since ``cos(a - b) = cos a cos b + sin a sin b``, that is a feature map of
dimension ``2 Dh``: ``phi(x_i) = [relu(x_i) sin(pi i / 2M), relu(x_i) cos(pi i / 2M)]``
(positions ``i`` from 1, as the official code), normalized row-wise: O(n d^2)
in the lean kernel of :mod:`variants._linear`.

``M``: the paper uses the sequence length. A causal model cannot know the
length of what it will generate, so causally ``M = max_seq_len`` (fixed at
build time: the stepwise form and the parallel form then agree, and longer
sequences are refused); bidirectionally ``M = n`` as in the paper. Rows whose
features are all zero (``relu(q) = 0``) output zeros.
"""

from __future__ import annotations

import math

import torch

import variants
from variants._feature_map import CAUSAL_CHUNK, FeatureMapAttention


def reweighting(start: int, end: int, horizon: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``sin`` and ``cos`` of ``pi/2 * i / M`` for positions ``i = start + 1 .. end``, as ``(T, 1)`` columns.

    Clamped at 0: in float32 ``cos(pi/2)`` comes out slightly negative.
    """
    angle = torch.arange(start + 1, end + 1, device=device, dtype=dtype)[:, None] * (math.pi / (2 * horizon))
    return angle.sin().clamp_min(0), angle.cos().clamp_min(0)


def query_features(q: torch.Tensor, start: int, end: int, horizon: int) -> torch.Tensor:
    """``[relu(q) sin, relu(q) cos]`` for rows at positions ``start:end``: ``(B, H, T, 2 Dh)``."""
    sin, cos = reweighting(start, end, horizon, q.device, q.dtype)
    relu = q.clamp_min(0)
    return torch.cat([relu * sin, relu * cos], dim=-1)


def key_logits(k: torch.Tensor, start: int, end: int, horizon: int) -> torch.Tensor:
    """The logarithm of the same features for keys; ``-inf`` where a feature is 0."""
    tiny = torch.finfo(k.dtype).tiny  # the clamps keep the gradient finite where the feature is 0
    sin, cos = (t.clamp_min(tiny).log() for t in reweighting(start, end, horizon, k.device, k.dtype))
    log_relu = torch.where(k > 0, k.clamp_min(tiny).log(), float("-inf"))
    return torch.cat([log_relu + sin, log_relu + cos], dim=-1)


@variants.register("cosformer")
class CosformerAttention(FeatureMapAttention):
    """ReLU features re-weighted by ``cos(pi/2 (i - j) / M)``: O(n d^2), a constant decoding state; no dropout."""

    family = "kernel"
    needs_max_seq_len = True  # the causal horizon M

    def __init__(self, *, chunk_size: int = CAUSAL_CHUNK, **common) -> None:
        super().__init__(**common)
        variants.check_range("chunk_size", chunk_size, low=1)
        self.chunk_size = chunk_size
        self.num_features = 2 * self.dim_head

    @property
    def recompute_features(self) -> bool:
        """Bidirectionally (peak 1.33x full's at n = 2048 without); causally it keeps little and 20% speed."""
        return not self.causal

    def horizon(self, seq: int | None) -> int:
        """``M``: the length bidirectionally (the paper), ``max_seq_len`` causally and when decoding."""
        return self.max_seq_len if self.causal or seq is None else seq

    def feature_functions(self, seq):
        horizon = self.horizon(seq)

        def queries(x: torch.Tensor, start: int, end: int) -> torch.Tensor:
            return query_features(x, start, end, horizon)

        def keys(x: torch.Tensor, start: int, end: int) -> torch.Tensor:
            return key_logits(x, start, end, horizon)

        return queries, keys
