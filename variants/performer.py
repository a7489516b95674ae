"""Performer: FAVOR+ attention (Choromanski et al. 2021, "Rethinking Attention with Performers").

Softmax attention ``exp(q.k / sqrt(d))`` is approximated by ``phi(q) . phi(k)``
with positive orthogonal random features
``phi(x) = exp(W x - |x|^2 / 2) / sqrt(m)`` (inputs pre-scaled by ``d^-1/4``),
so attention is ``phi(Q) (phi(K)^T V)`` normalized row-wise: O(n m d).

Numerical stabilization: each query's features are shifted by their own max
and all keys' features by one shared max over real keys (causal: a running
max, rescaling the prefix state when it grows). Both shifts cancel exactly in
the normalized ratio, so large logits give no inf/NaN and the stabilizers
carry no gradient. The kernel (:mod:`variants._linear`) never keeps an
``(n, m)`` feature matrix for the backward pass: it recomputes features chunk
by chunk, so training memory is O(n d + m d) rather than O(n m).
"""

from __future__ import annotations

import math

import torch

import variants
from variants._feature_map import FeatureMapAttention
from variants._linear import exp_


def orthogonal_gaussian_features(nb_features: int, dim: int) -> torch.Tensor:
    """``(m, d)`` random features: orthogonal blocks with chi-distributed row norms."""
    blocks = []
    for start in range(0, nb_features, dim):
        q, _ = torch.linalg.qr(torch.randn(dim, dim))
        blocks.append(q.T[: min(dim, nb_features - start)])
    norms = torch.randn(nb_features, dim).norm(dim=1, keepdim=True)
    return norms * torch.cat(blocks)


class _QueryFeatures(torch.autograd.Function):
    """``exp(x W^T - max)`` per row, the max a per-row constant; backward ``((grad * features) @ W)``: one product and
    one elementwise pass, where autograd ran four passes over the ``(rows, m)`` gradient (the exp's, exp2's
    ``ln 2``, the ``log2 e`` factor's)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        logits = x @ weight.T
        features = exp_(logits.sub_(logits.amax(dim=-1, keepdim=True)))  # in place: one (rows, m) buffer
        ctx.save_for_backward(x, weight, features)
        return features

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, features = ctx.saved_tensors
        grad = grad * features
        return grad @ weight, _weight_grad(ctx, grad, x)


class _KeyLogits(torch.autograd.Function):
    """``x W^T - |x|^2 / 2`` (inputs pre-scaled); backward ``grad @ W - x * sum(grad)``, where autograd negated the
    whole ``(rows, m)`` gradient to sum it for the norm."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return (x @ weight.T).sub_(x.square().sum(dim=-1, keepdim=True) * _norm_scale(x))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = torch.addcmul(grad @ weight, x, grad.sum(dim=-1, keepdim=True), value=-2 * _norm_scale(x))
        return grad_x, _weight_grad(ctx, grad, x)


def _norm_scale(x: torch.Tensor) -> float:
    return 0.5 / math.sqrt(x.shape[-1])  # the inputs are scaled by d^-1/4 inside W: |x|^2 / 2 scales by d^-1/2


def _weight_grad(ctx, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
    """``grad^T x`` summed over rows, for a projection that is trained (the random features are a buffer)."""
    return grad.flatten(0, -2).T @ x.flatten(0, -2) if ctx.needs_input_grad[1] else None


def query_features(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Positive query features ``exp(W x)`` of rows ``(..., d)``, ``(..., m)``; the per-query shift by their max (and
    ``-|q|^2/2``) cancel in the ratio."""
    return _QueryFeatures.apply(x, weight)


def key_logits(x: torch.Tensor, weight: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """``W k - |k|^2 / 2`` per key and feature, ``-inf`` at padded keys."""
    logits = _KeyLogits.apply(x, weight)
    return logits if valid is None else logits.masked_fill(~valid[:, None, :, None], float("-inf"))


@variants.register("performer")
class PerformerAttention(FeatureMapAttention):
    """FAVOR+ linear attention with ``nb_features`` positive orthogonal random features.

    No attention dropout: the weights ``phi(q) . phi(k)`` are never formed, so
    there is nothing to drop (the reference ``performer-pytorch`` has none
    either); ``build`` refuses ``dropout > 0``. Decoding keeps the constant
    ``(nb_features, Dh)`` summary of the causal scan.
    """

    family = "kernel"
    supports_cross = True  # position-free random features: queries over keys of another length
    budget = ("nb_features", (8, 16, 32, 64, 128, 256, 512))

    def __init__(
        self,
        *,
        nb_features: int = 256,
        redraw_interval: int = 0,
        chunk_size: int = 32,  # causal scan (in groups): against 64, interleaved, whole model 1.05-1.10x faster
        **common,
    ) -> None:
        super().__init__(**common)
        variants.check_range("nb_features", nb_features, low=1)
        variants.check_range("redraw_interval", redraw_interval, low=0)
        variants.check_range("chunk_size", chunk_size, low=1)
        self.nb_features = self.num_features = nb_features
        self.redraw_interval = redraw_interval
        self.chunk_size = chunk_size
        self.register_buffer("features", torch.empty(nb_features, self.dim_head))
        self.redraw_features()

    @torch.no_grad()
    def redraw_features(self) -> None:
        """Draw a fresh projection from the global RNG, pre-scaled by ``d^-1/4``."""
        fresh = orthogonal_gaussian_features(self.nb_features, self.dim_head) * self.dim_head**-0.25
        self.features.copy_(fresh.to(self.features.device))

    def query_feature_rows(self, q, start, end):  # exp() of random projections: computed in fp32 (the base class)
        return query_features(q, self.features.to(q.dtype))

    def key_logit_rows(self, k, start, end):
        return key_logits(k, self.features.to(k.dtype), None)

    def on_train_step(self, step: int) -> None:
        if self.redraw_interval and step > 0 and step % self.redraw_interval == 0:
            self.redraw_features()

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, nb_features={self.nb_features}, "
            f"redraw_interval={self.redraw_interval}, chunk_size={self.chunk_size}"
        )
