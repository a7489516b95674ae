"""Linear Transformer (Katharopoulos et al. 2020, "Transformers are RNNs").

Softmax's ``exp(q.k)`` is replaced by ``phi(q) . phi(k)`` with the feature map
``phi(x) = elu(x) + 1`` (positive, dimension ``dim_head``), so attention is
``phi(Q) (phi(K)^T V)`` normalized row-wise: O(n d^2) time, O(n d) memory.
Causal attention keeps running sums over the prefix, chunk by chunk. Both run
in the lean kernel of :mod:`variants._linear`, which keeps no feature matrix
for the backward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import variants
from variants._decoding import SummaryDecoding
from variants._linear import linear_attention


def elu_features(x: torch.Tensor) -> torch.Tensor:
    """``elu(x) + 1``: positive features, the paper's choice."""
    return F.elu(x) + 1


def elu_feature_logits(x: torch.Tensor) -> torch.Tensor:
    """``log(elu(x) + 1)``, without forming the exponential: ``log1p(x)`` above 0, ``x`` below."""
    return torch.where(x > 0, torch.log1p(x.clamp_min(0)), x)


@variants.register("linear")
class LinearAttention(SummaryDecoding, variants.Attention):
    """Normalized ``phi(Q) (phi(K)^T V)`` with ``phi = elu + 1``: O(n d^2).

    No attention dropout (the weights are never formed; ``build`` refuses it).
    Decoding keeps the constant ``(Dh, Dh)`` summary of the causal scan.
    """

    supports_causal = True
    supports_dropout = False

    def __init__(self, *, chunk_size: int = 128, **common) -> None:
        super().__init__(**common)
        variants.check_range("chunk_size", chunk_size, low=1)
        self.chunk_size = chunk_size
        self.num_features = self.dim_head

    def query_feature_rows(self, q, start, end):
        return elu_features(q)

    def key_logit_rows(self, k, start, end):
        return elu_feature_logits(k)

    def attend(self, q, k, v, mask):
        with torch.autocast(device_type=q.device.type, enabled=False):
            out_dtype = q.dtype
            dtype = torch.promote_types(q.dtype, torch.float32)  # sums over n keys: fp32 at least
            q, k, v = (t.to(dtype) for t in (q, k, v))

            def keys(x: torch.Tensor, start: int, end: int) -> torch.Tensor:
                logits = self.key_logit_rows(x, start, end)
                if mask is not None:
                    logits = logits.masked_fill(~mask[:, None, start:end, None], float("-inf"))
                return logits

            out = linear_attention(
                q,
                k,
                v,
                query_features=self.query_feature_rows,
                key_logits=keys,
                num_features=self.num_features,
                causal=self.causal,
                chunk=self.chunk_size,
            )
        return out.to(out_dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, chunk_size={self.chunk_size}"
