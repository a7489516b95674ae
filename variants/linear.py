"""Linear Transformer (Katharopoulos et al. 2020, "Transformers are RNNs").

Softmax's ``exp(q.k)`` is replaced by ``phi(q) . phi(k)`` with the feature map
``phi(x) = elu(x) + 1`` (positive, dimension ``dim_head``), so attention is
``phi(Q) (phi(K)^T V)`` normalized row-wise: O(n d^2) time, O(n d) memory.
Causal attention keeps running sums over the prefix, chunk by chunk. Both run
in the lean kernel of :mod:`variants._linear`, which keeps no feature matrix
for the backward pass; decoding keeps the constant ``(Dh, Dh)`` summary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import variants
from variants._feature_map import CAUSAL_CHUNK, FeatureMapAttention


def elu_features(x: torch.Tensor) -> torch.Tensor:
    """``elu(x) + 1``: positive features, the paper's choice."""
    return F.elu(x) + 1


def elu_feature_logits(x: torch.Tensor) -> torch.Tensor:
    """``log(elu(x) + 1)``, without forming the exponential: ``log1p(x)`` above 0, ``x`` below."""
    return torch.where(x > 0, torch.log1p(x.clamp_min(0)), x)


@variants.register("linear")
class LinearAttention(FeatureMapAttention):
    """Normalized ``phi(Q) (phi(K)^T V)`` with ``phi = elu + 1``: O(n d^2); no attention dropout."""

    family = "kernel"
    supports_cross = True  # position-free features: queries over keys of another length

    def __init__(self, *, chunk_size: int = CAUSAL_CHUNK, **common) -> None:
        super().__init__(**common)
        variants.check_range("chunk_size", chunk_size, low=1)
        self.chunk_size = chunk_size
        self.num_features = self.dim_head

    def query_feature_rows(self, q, start, end):
        return elu_features(q)

    def key_logit_rows(self, k, start, end):
        return elu_feature_logits(k)
