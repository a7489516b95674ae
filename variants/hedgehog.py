"""Hedgehog (Zhang et al. 2024, "The Hedgehog & the Porcupine: Expressive Linear Attentions with Softmax Mimicry").

Linear attention whose feature map is learned: per head, ``z = W x + b`` and
``phi(x) = softmax([2z, -2z])`` over the ``2 Dh`` features (the map of
flash-linear-attention's ``HedgehogFeatureMap``; the softmax keeps every
feature in (0, 1), so large inputs cannot overflow). ``W`` starts as the
identity and ``b`` at zero; the variant owns them (``2 * heads * Dh^2``
parameters, shown in the report's parameter column).

The paper first trains the map to mimic softmax attention weights (a
distillation loss), then the model; here the map trains end to end with the
task loss, like every other parameter of the skeleton.
"""

from __future__ import annotations

import torch
from torch import nn

import variants
from variants._feature_map import CAUSAL_CHUNK, FeatureMapAttention


@variants.register("hedgehog")
class HedgehogAttention(FeatureMapAttention):
    """Normalized ``phi(Q) (phi(K)^T V)`` with a learned per-head map: O(n d^2), a constant decoding state."""

    family = "kernel"
    supports_cross = True  # position-free learned features: queries over keys of another length

    def __init__(self, *, chunk_size: int = CAUSAL_CHUNK, **common) -> None:
        super().__init__(**common)
        variants.check_range("chunk_size", chunk_size, low=1)
        self.chunk_size = chunk_size
        self.num_features = 2 * self.dim_head
        eye = torch.eye(self.dim_head).expand(2, self.heads, -1, -1)  # queries' and keys' maps
        self.weight = nn.Parameter(eye.clone())
        self.bias = nn.Parameter(torch.zeros(2, self.heads, 1, self.dim_head))

    def feature_parameters(self):
        return self.weight, self.bias

    def feature_projection(self, x, which, weight, bias):
        """``2 (W x + b)`` per head for queries (``which=0``) or keys (1): ``(B, H, T, Dh)``."""
        return 2 * (x @ weight[which].transpose(-2, -1) + bias[which])

    def query_feature_rows(self, q, start, end):
        return torch.cat([q, -q], dim=-1).softmax(dim=-1)

    def key_logit_rows(self, k, start, end):
        return torch.cat([k, -k], dim=-1).log_softmax(dim=-1)
