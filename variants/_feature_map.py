"""The base class of feature-map (linear) attention: one parallel form and one decoding form for the family.

A subclass gives ``num_features``, ``chunk_size`` and two feature functions of
rows at absolute positions ``start:end`` (cosFormer's depend on them):
``query_feature_rows(q, start, end)`` and ``key_logit_rows(k, start, end)``,
the logarithms of the key features (or, with ``signed_features``, the
features themselves, which may be negative). Optionally ``feature_inputs``
(learned projections the features read) and ``feature_functions`` (functions
that depend on the sequence length). It inherits the parallel form, in the
lean kernel of :mod:`variants._linear`, and decoding with a constant
``(m, Dh)`` summary (:mod:`variants._decoding`): Performer, Linear
Transformer, cosFormer, Hedgehog and Based's linear branch are each a feature
map and little else.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from variants._base import Attention, State
from variants._decoding import add_to_summary, empty_summary, read_summary
from variants._linear import AnalyticGradients, FeatureFn, linear_attention
from variants._recompute import recomputed

# Rows per chunk of the causal scan (the kernel takes chunks in groups). Whole model at n = 2048, interleaved, Zen 4,
# against 128: cosFormer 1.74x full against 1.47x, Based 0.86-0.89x against 0.67x, Linear / Hedgehog 1.84-1.86x
# against 1.66-1.67x; 32 was faster still for the narrow maps (1.93-1.98x) but added 5-9% to the step's peak.
CAUSAL_CHUNK = 64


def _sum(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return a if b is None else b if a is None else a + b


def _kept(mask: torch.Tensor, start: int, end: int, rows: torch.Tensor) -> torch.Tensor:
    """The padding mask of rows ``start:end`` shaped like ``rows``' ``(B, [H, g,] C)``: ``(B, [g,] C)``, where the
    causal kernel hands over a group of chunks as ``(B, H, g, C, ...)``."""
    keep = mask[:, start:end]
    return keep.unflatten(1, rows.shape[2:4]) if rows.dim() == 5 else keep


class FeatureMapAttention(Attention):
    """Normalized ``phi(Q) (phi(K)^T V)``: O(n m d) time, O(n d) memory, a constant decoding state.

    No attention dropout: the weights are never formed (``build`` refuses it).
    """

    supports_causal = True
    supports_dropout = False
    supports_decoding = True
    signed_features: ClassVar[bool] = False  # key_logit_rows gives the features themselves (see linear_attention)
    # True: the parallel form keeps only its inputs for the backward pass and runs again there (variants._recompute).
    recompute_features: ClassVar[bool] = False
    num_features: int
    chunk_size: int

    def feature_parameters(self) -> tuple[torch.Tensor, ...]:
        """Learned tensors :meth:`feature_projection` reads; the kernel pulls back their gradients per chunk."""
        return ()

    def feature_projection(self, x: torch.Tensor, which: int, *parameters: torch.Tensor) -> torch.Tensor:
        """Rows of queries (``which=0``) or keys (1) as the feature functions read them: ``x`` itself, or a learned map.

        The parallel kernel applies it chunk by chunk, so training keeps no projected copy of q and k.
        """
        return x

    def feature_inputs(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the feature functions read: q and k through :meth:`feature_projection` (decoding, cross-attention)."""
        parameters = tuple(p.to(q.dtype) for p in self.feature_parameters())
        return self.feature_projection(q, 0, *parameters), self.feature_projection(k, 1, *parameters)

    def query_feature_rows(self, q: torch.Tensor, start: int, end: int) -> torch.Tensor:
        raise NotImplementedError

    def key_logit_rows(self, k: torch.Tensor, start: int, end: int) -> torch.Tensor:
        raise NotImplementedError

    def parallel_num_features(self) -> int:
        """How many features :meth:`feature_functions` gives for a parallel call (decoding: ``num_features``)."""
        return self.num_features

    def pair_scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """``phi(q_i) . phi(k_j)`` of projected rows in closed form, ``(B, H, Nq, Nk)``: override where one is cheap.

        The causal kernel then uses it for each chunk's own pairs instead of the ``m``-wide feature product
        (signed features only). Not overridden: the kernel multiplies the features.
        """
        raise NotImplementedError

    def feature_vjp(self, x: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """Gradient to projected rows ``x`` of their parallel features (both maps), given as ``left @ right^T``.

        Override with a closed form (signed features; causally with :meth:`pair_scores_vjp` too) and the
        backward pass runs no autograd graph per chunk (:class:`variants._linear.AnalyticGradients`).
        """
        raise NotImplementedError

    def pair_scores_vjp(
        self, q: torch.Tensor, k: torch.Tensor, grad: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients to projected rows ``q`` and ``k`` of :meth:`pair_scores`, given its output's ``grad``."""
        raise NotImplementedError

    def feature_projection_vjp(
        self, x: torch.Tensor, which: int, grad: torch.Tensor, *parameters: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor | None, ...]]:
        """Gradient of :meth:`feature_projection` to its rows and parameters, given its output's ``grad``."""
        if parameters:
            raise NotImplementedError(f"{type(self).__name__} learns a projection: give its feature_projection_vjp")
        return grad, ()

    def _overrides(self, method: str) -> bool:
        return getattr(type(self), method) is not getattr(FeatureMapAttention, method)

    def _analytic(self, closed_form_pairs: bool) -> bool:
        """Whether the parallel kernel gets closed-form gradients: signed features with a feature_vjp, and
        causally closed-form pairs with theirs."""
        if not (self.signed_features and self._overrides("feature_vjp")):
            return False
        return not self.causal or (closed_form_pairs and self._overrides("pair_scores_vjp"))

    def feature_functions(self, seq: int | None) -> tuple[FeatureFn, FeatureFn]:
        """The query and key functions for a parallel call over ``seq`` rows, or for decoding (``None``)."""
        return self.query_feature_rows, self.key_logit_rows

    def attend(self, q, k, v, mask):
        return self.linear_attend(q, k, v, mask)

    def linear_attend(self, q, k, v, mask):
        """The parallel form (bidirectional or causal) with padded keys given no weight."""
        if self.recompute_features:  # keep q, k, v for the backward pass, not the learned maps' inputs
            return recomputed(self._linear_parallel, q, k, v, mask)
        return self._linear_parallel(q, k, v, mask)

    def _linear_parallel(self, q, k, v, mask):
        with torch.autocast(device_type=q.device.type, enabled=False):
            out_dtype = q.dtype
            dtype = torch.promote_types(q.dtype, torch.float32)  # sums over n keys: fp32 at least
            q, k, v = (t.to(dtype) for t in (q, k, v))
            parameters = tuple(p.to(dtype) for p in self.feature_parameters())
            query_features, key_logits = self.feature_functions(q.shape[2])

            def queries(x: torch.Tensor, start: int, end: int, *parameters: torch.Tensor) -> torch.Tensor:
                return query_features(self.feature_projection(x, 0, *parameters), start, end)

            def keys(x: torch.Tensor, start: int, end: int, *parameters: torch.Tensor) -> torch.Tensor:
                logits = key_logits(self.feature_projection(x, 1, *parameters), start, end)
                if mask is None:
                    return logits
                keep = mask[:, None, start:end, None]
                return logits * keep if self.signed_features else logits.masked_fill(~keep, float("-inf"))

            def pairs(xq: torch.Tensor, xk: torch.Tensor, start: int, end: int, *parameters: torch.Tensor):
                scores = self.pair_scores(
                    self.feature_projection(xq, 0, *parameters), self.feature_projection(xk, 1, *parameters)
                )
                return scores if mask is None else scores * _kept(mask, start, end, xk)[:, None, ..., None, :]

            def query_vjp(x: torch.Tensor, start: int, end: int, left, right, *parameters: torch.Tensor):
                grad = self.feature_vjp(self.feature_projection(x, 0, *parameters), left, right)
                return self.feature_projection_vjp(x, 0, grad, *parameters)

            def key_vjp(x: torch.Tensor, start: int, end: int, left, right, *parameters: torch.Tensor):
                left = left if mask is None else left * _kept(mask, start, end, x)[:, None, ..., None]
                grad = self.feature_vjp(self.feature_projection(x, 1, *parameters), left, right)
                return self.feature_projection_vjp(x, 1, grad, *parameters)

            def pair_vjp(xq: torch.Tensor, xk: torch.Tensor, start: int, end: int, grad, *parameters: torch.Tensor):
                grad = grad if mask is None else grad * _kept(mask, start, end, xk)[:, None, ..., None, :]
                projected = self.feature_projection(xq, 0, *parameters), self.feature_projection(xk, 1, *parameters)
                grad_q, grad_k = self.pair_scores_vjp(*projected, grad)
                dq, q_parameters = self.feature_projection_vjp(xq, 0, grad_q, *parameters)
                dk, k_parameters = self.feature_projection_vjp(xk, 1, grad_k, *parameters)
                return dq, dk, tuple(_sum(a, b) for a, b in zip(q_parameters, k_parameters, strict=True))

            closed_form = self.signed_features and self._overrides("pair_scores")
            out = linear_attention(
                q,
                k,
                v,
                query_features=queries,
                key_logits=keys,
                num_features=self.parallel_num_features(),
                causal=self.causal,
                chunk=self.chunk_size,
                signed=self.signed_features,
                parameters=parameters,
                pair_scores=pairs if closed_form else None,
                analytic=AnalyticGradients(query_vjp, key_vjp, pair_vjp) if self._analytic(closed_form) else None,
            )
        return out.to(out_dtype)

    def init_state(self, batch, *, device="cpu", dtype=torch.float32) -> State:
        self._check_decoding()
        state = empty_summary(batch, self.heads, self.num_features, self.dim_head, device, dtype)
        return state | {"position": torch.zeros((), dtype=torch.long, device=device)}

    def decode_step(self, q, k, v, state):
        return self._fold(q, k, v, state)

    def prefill(self, q, k, v):
        self._check_decoding()
        state = self.init_state(q.shape[0], device=q.device, dtype=q.dtype)
        _, state = self._fold(q[:, :, :0], k, v, state)
        return self(q, k, v), state

    def _fold(self, q, k, v, state):
        """Add keys ``k``, values ``v`` at the next positions; read queries ``q`` (the last of them) from the result."""
        out_dtype = q.dtype
        with torch.autocast(q.device.type, enabled=False):
            dtype = state["context"].dtype
            q, k = self.feature_inputs(q.to(dtype), k.to(dtype))
            query_features, key_logits = self.feature_functions(None)
            start = int(state["position"])
            end = start + k.shape[2]
            summary = add_to_summary(state, key_logits(k, start, end), v, signed=self.signed_features)
            out = read_summary(query_features(q, end - q.shape[2], end), summary)  # the queries are the last rows
        return out.to(out_dtype), summary | {"position": state["position"] + k.shape[2]}

    def cross_state(self, k, v, mask=None):
        """The source folded once into the constant ``(m, Dh)`` summary: its size does not grow with M."""
        self._check_cross()
        with torch.autocast(k.device.type, enabled=False):
            state = empty_summary(k.shape[0], self.heads, self.num_features, self.dim_head, k.device, k.dtype)
            dtype = state["context"].dtype
            _, keys = self.feature_inputs(k[:, :, :0].to(dtype), k.to(dtype))
            logits = self.feature_functions(None)[1](keys, 0, k.shape[2])
            if mask is not None:
                keep = mask[:, None, :, None]
                logits = logits * keep if self.signed_features else logits.masked_fill(~keep, float("-inf"))
            return add_to_summary(state, logits, v, signed=self.signed_features)

    def cross_step(self, q, state):
        self._check_cross()
        out_dtype = q.dtype
        with torch.autocast(q.device.type, enabled=False):
            dtype = state["context"].dtype
            queries, _ = self.feature_inputs(q.to(dtype), q[:, :, :0].to(dtype))
            out = read_summary(self.feature_functions(None)[0](queries, 0, q.shape[2]), state)
        return out.to(out_dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, chunk_size={self.chunk_size}"
