"""Based (Arora et al. 2024, "Simple linear attention language models balance the recall-throughput tradeoff").

Two branches over the same tokens, averaged:

- **Taylor linear attention** on a small learned projection (``Dh -> feature_dim``,
  16 in the paper, owned by the variant): ``exp(s) ~ 1 + s + s^2 / 2`` with
  ``s = q'.k' / sqrt(feature_dim)``, written as the feature map
  ``[1, x / d^1/4, vec(x x^T) / sqrt(2 d)]`` (the upper triangle only:
  ``1 + d + d(d+1)/2`` features, 153 for d = 16). Every ``1 + s + s^2/2`` is
  positive (at least 1/2), so rows normalize safely; the features themselves
  may be negative (the kernel's ``signed`` mode). O(n d'^2 Dh). Training
  takes all of ``x x^T`` instead (273 features: fewer, larger operators), and
  the causal scan each chunk's own pairs as ``1 + s + s^2 / 2`` from the
  16-wide projections, not a 273-wide product; decoding keeps the triangle.
  The backward pass takes the gradients of the features, the pairs and the
  projection in closed form (:meth:`BasedAttention.feature_vjp` and the two
  after it), not through an autograd graph per chunk: whole model at n = 2048,
  interleaved with full in one process (Zen 4), causal 0.60-0.64x full -> 0.66-0.79x,
  bidirectional 1.28x -> 1.55x, the same live peak.
- **Exact sliding-window softmax** over nearby tokens, the ``local`` variant's
  blocked window (each token sees its own block of ``window`` tokens and the
  one before: between ``window`` and ``2 window - 1`` keys).

The paper interleaves the two kinds of layer (with short convolutions) in one
model; in one attention core we average them, which keeps each row a
distribution. Decoding keeps the Taylor summary (constant) and the window cache.
"""

from __future__ import annotations

import math

import torch
from torch import nn

import variants
from variants._feature_map import CAUSAL_CHUNK, FeatureMapAttention
from variants.local import LocalAttention

WINDOW = "window."  # prefix of the window branch's entries in the decoding state


def taylor_features(x: torch.Tensor) -> torch.Tensor:
    """``(..., d) -> (..., 1 + d + d(d+1)/2)``: ``phi(x) . phi(y) = 1 + s + s^2 / 2``, ``s = x.y / sqrt(d)``."""
    dim = x.shape[-1]
    scaled = x / math.sqrt(math.sqrt(dim))  # x_i x_j / sqrt(d) = scaled_i scaled_j
    # The upper triangle of x x^T row by row, (0, 1) ... (0, d-1), (1, 2) ...: slices, not a gather, whose
    # backward (an index_put) took a third of the core's step at n = 2048.
    triangle = [scaled[..., i : i + 1] * scaled[..., i + 1 :] for i in range(dim - 1)]
    diagonal = scaled.square() / math.sqrt(2)  # counted once; the triangle once for both halves
    return torch.cat([torch.ones_like(x[..., :1]), scaled, diagonal, *triangle], dim=-1)


def taylor_features_square(x: torch.Tensor) -> torch.Tensor:
    """The same kernel with all of ``x x^T`` (``1 + d + d^2`` features, as in the paper's code): one product, not d.

    The parallel kernel builds features of every chunk several times (forward and backward); with the
    triangle's d - 1 slices, products and their concatenation, those small operators cost more than the 1.8x
    wider state products do. Whole model, n = 2048, in one process, interleaved with full: causal 1.24x faster
    (0.77x full against 0.62x), bidirectional 1.30x and 1.23x in two runs (1.34x / 1.44x full against 1.03x /
    1.17x), the same peak memory (42.2 MiB against 42.1).

    Written into one buffer, not concatenated (half the time: 160 us against 320 us for 2 x 4 heads x 384 rows),
    where no gradient is asked for: the kernel's closed forms build features without autograd.
    """
    dim = x.shape[-1]
    if torch.is_grad_enabled() and x.requires_grad:  # out= does not differentiate
        scaled = x / math.sqrt(math.sqrt(dim))
        square = (scaled[..., :, None] * (scaled / math.sqrt(2))[..., None, :]).flatten(-2)  # each pair twice, halved
        return torch.cat([torch.ones_like(x[..., :1]), scaled, square], dim=-1)
    features = x.new_empty(*x.shape[:-1], 1 + dim + dim * dim)
    features[..., 0] = 1.0
    scaled = torch.div(x, math.sqrt(math.sqrt(dim)), out=features[..., 1 : 1 + dim])
    square = features[..., 1 + dim :].unflatten(-1, (dim, dim))
    torch.mul(scaled[..., :, None], (scaled / math.sqrt(2))[..., None, :], out=square)  # each pair twice, halved
    return features


@variants.register("based")
class BasedAttention(FeatureMapAttention):
    """Mean of Taylor linear attention (projected to ``feature_dim``) and blocked sliding-window softmax.

    No attention dropout (the Taylor weights are never formed; ``build`` refuses it).
    """

    family = "kernel"
    signed_features = True

    def __init__(self, *, feature_dim: int = 16, window: int = 64, chunk_size: int = CAUSAL_CHUNK, **common) -> None:
        super().__init__(**common)
        variants.check_range("feature_dim", feature_dim, low=1)
        variants.check_range("chunk_size", chunk_size, low=1)
        self.feature_dim = feature_dim
        self.chunk_size = chunk_size
        self.num_features = 1 + feature_dim + feature_dim * (feature_dim + 1) // 2
        self.project = nn.Linear(self.dim_head, feature_dim, bias=False)  # shared by queries and keys, as in Based
        self.window_attention = LocalAttention(
            heads=self.heads, dim_head=self.dim_head, max_seq_len=self.max_seq_len, causal=self.causal, window=window
        )

    def feature_parameters(self):
        return (self.project.weight,)

    def feature_projection(self, x, which, weight):  # shared by queries and keys
        return x @ weight.T

    def query_feature_rows(self, q, start, end):
        return taylor_features(q)

    def key_logit_rows(self, k, start, end):  # signed: the features themselves
        return taylor_features(k)

    def feature_functions(self, seq):
        if seq is None:  # decoding keeps the triangle's smaller (153, Dh) summary
            return super().feature_functions(seq)
        return (lambda q, start, end: taylor_features_square(q)), (lambda k, start, end: taylor_features_square(k))

    def parallel_num_features(self) -> int:
        return 1 + self.feature_dim + self.feature_dim**2

    def pair_scores(self, q, k):  # 1 + s + s^2 / 2 from 16 columns, not a product over 273 features
        s = (q / math.sqrt(self.feature_dim)) @ k.transpose(-2, -1)
        return torch.addcmul(s + 1, s, s, value=0.5)  # autograd keeps s alone

    def feature_vjp(self, x, left, right):
        # taylor_features_square's gradient G = left @ right^T, G never formed. Its square part is
        # s_a s_b / sqrt(2) (s = x / d^1/4), so dx_c = sum_b (G[c, b] + G[b, c]) x_b / sqrt(2 d)
        #   = sum_(b, e) (x_b left_e) (R[c, b, e] + R[b, c, e]) / sqrt(2 d), R the square rows of right:
        # one product over d * e columns per row instead of a (rows, 273) gradient and its autograd graph.
        d = x.shape[-1]
        square = right[..., 1 + d :, :].unflatten(-2, (d, d))  # R: (B, H, d, d, e)
        symmetric = (square + square.transpose(-3, -2)).mul_((2 * d) ** -0.5)
        symmetric = symmetric.transpose(-2, -1).flatten(-3, -2)  # rows (b, e), column c
        outer = (x[..., :, None] * left[..., None, :]).flatten(-2)  # (B, H, rows, d * e): x_b left_e
        linear = left @ right[..., 1 : 1 + d, :].transpose(-2, -1)  # the features x / d^1/4
        batch = x.shape[:-2]  # (B, H), or (B, H, g) for a group of causal chunks
        grad = torch.baddbmm(linear.flatten(0, -3), outer.flatten(0, -3), symmetric.flatten(0, -3), beta=d**-0.25)
        return grad.unflatten(0, batch)

    def pair_scores_vjp(self, q, k, grad):
        scaled_q = q / math.sqrt(self.feature_dim)
        s = scaled_q @ k.transpose(-2, -1)
        grad_s = torch.addcmul(grad, grad, s)  # d(1 + s + s^2 / 2) / ds = 1 + s
        return (grad_s @ k) / math.sqrt(self.feature_dim), grad_s.transpose(-2, -1) @ scaled_q

    def feature_projection_vjp(self, x, which, grad, weight):
        return grad @ weight, (grad.flatten(0, -2).T @ x.flatten(0, -2),)

    def attend(self, q, k, v, mask):
        # The window first: autograd runs the later branch's backward first, so the linear branch's (which rebuilds
        # its features chunk by chunk) runs before the window's gradients exist: the core's peak at n = 2048 is 21
        # q-sized tensors against 26 the other way round.
        window = self.window_attention.attend(q, k, v, mask)
        linear = self.linear_attend(q, k, v, mask)
        return (linear + window.to(linear.dtype)) / 2

    def init_state(self, batch, *, device="cpu", dtype=torch.float32):
        window = self.window_attention.init_state(batch, device=device, dtype=dtype)
        return super().init_state(batch, device=device, dtype=dtype) | {WINDOW + n: t for n, t in window.items()}

    def decode_step(self, q, k, v, state):
        summary = {n: t for n, t in state.items() if not n.startswith(WINDOW)}
        window = {n.removeprefix(WINDOW): t for n, t in state.items() if n.startswith(WINDOW)}
        linear, summary = super().decode_step(q, k, v, summary)
        local, window = self.window_attention.decode_step(q, k, v, window)
        return (linear + local) / 2, summary | {WINDOW + n: t for n, t in window.items()}

    def prefill(self, q, k, v):
        out, summary = super().prefill(q, k, v)
        _, window = self.window_attention.prefill(q, k, v)
        return out, summary | {WINDOW + n: t for n, t in window.items()}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, feature_dim={self.feature_dim}, window={self.window_attention.window}"
