"""Sliding-window attention as one fused SDPA call per chunk of queries over its contiguous span of keys.

With chunks of ``window`` queries, the keys a chunk may see (the chunk before,
its own and, bidirectionally, the chunk after) are one contiguous span of the
sequence: no gather, each call reads views of q, k and v. Each call is PyTorch's
fused CPU flash kernel, which keeps only the output and its log-sum-exp and
recomputes the probabilities in its backward pass, as FlashAttention does.

Why a custom autograd function rather than ``F.scaled_dot_product_attention``
on slices: autograd's backward of a slice materializes a zero gradient of the
whole tensor per slice, so ``n / window`` slices cost O(n^2 / window) memory
traffic (38% of ``based``'s step at n = 2048 went to ``fill_``). Here the
backward pass writes each chunk's gradients into three tensors of the inputs'
size. The ops are the CPU flash kernel's own (``aten::_scaled_dot_product_flash_
attention_for_cpu`` and its backward); :func:`available` says where they run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

_FORWARD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_BACKWARD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)


def available(q: torch.Tensor) -> bool:
    """Whether the fused span kernel runs for ``q``: on CPU, with a PyTorch that has the flash ops."""
    return q.device.type == "cpu" and _FORWARD is not None and _BACKWARD is not None


def chunks(seq: int, window: int, causal: bool) -> Iterator[tuple[int, int, int, int]]:
    """``(start, end, low, high)``: each chunk of queries and its span of keys."""
    for start in range(0, seq, window):
        end = min(start + window, seq)
        yield start, end, max(0, start - window), min(seq, end + (0 if causal else window))


class _Bias:
    """Causally: query ``r`` of a chunk sees key ``c`` of its span (chunk before, then its own) where
    ``c <= r + window``; an additive ``window x 2 window`` matrix made once, sliced per chunk (views)."""

    def __init__(self, window: int, causal: bool, like: torch.Tensor) -> None:
        self.window = window
        self.matrix = None
        if causal:
            rows = torch.arange(window, device=like.device)[:, None]
            cols = torch.arange(2 * window, device=like.device)[None, :]
            self.matrix = torch.zeros(window, 2 * window, dtype=like.dtype, device=like.device)
            self.matrix.masked_fill_(cols > rows + window, -math.inf)

    def of(self, start: int, end: int, low: int, high: int) -> torch.Tensor | None:
        if self.matrix is None:
            return None
        w = self.window
        return self.matrix[: end - start, low - start + w : high - start + w]


class _SpanAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, window: int, causal: bool):
        bias = _Bias(window, causal, q)
        out = torch.empty_like(q)
        lse = []
        for start, end, low, high in chunks(q.shape[2], window, causal):
            o, rows = _FORWARD(
                q[:, :, start:end],
                k[:, :, low:high],
                v[:, :, low:high],
                0.0,
                False,
                attn_mask=bias.of(start, end, low, high),
            )
            out[:, :, start:end] = o
            lse.append(rows)
        ctx.save_for_backward(q, k, v, out, torch.cat(lse, dim=2))
        ctx.window, ctx.causal = window, causal
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        bias = _Bias(ctx.window, ctx.causal, q)
        grad_out = grad_out.contiguous()
        grad_q, grad_k, grad_v = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for start, end, low, high in chunks(q.shape[2], ctx.window, ctx.causal):
            dq, dk, dv = _BACKWARD(
                grad_out[:, :, start:end],
                q[:, :, start:end],
                k[:, :, low:high],
                v[:, :, low:high],
                out[:, :, start:end],
                lse[:, :, start:end],
                0.0,
                False,
                attn_mask=bias.of(start, end, low, high),
            )
            grad_q[:, :, start:end] = dq
            grad_k[:, :, low:high] += dk
            grad_v[:, :, low:high] += dv
        return grad_q, grad_k, grad_v, None, None


def span_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: int, causal: bool) -> torch.Tensor:
    """Sliding-window softmax attention ``(B, H, N, Dh)`` in and out, O(n) memory; needs :func:`available`."""
    return _SpanAttention.apply(q, k.to(q.dtype), v.to(q.dtype), window, causal)
