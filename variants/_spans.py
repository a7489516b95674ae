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


def pieces(
    seq: int, window: int, causal: bool, like: torch.Tensor
) -> Iterator[tuple[slice, slice, torch.Tensor | None]]:
    """Each chunk of queries, its span of keys, and causally its additive mask: query ``r`` of a chunk sees key
    ``c`` of its span (the chunk before, then its own) where ``c <= r + window``, sliced (a view) from one
    ``window x 2 window`` matrix made once. Both passes walk the same pieces."""
    bias = None
    if causal:
        rows = torch.arange(window, device=like.device)[:, None]
        cols = torch.arange(2 * window, device=like.device)[None, :]
        bias = torch.zeros(window, 2 * window, dtype=like.dtype, device=like.device)
        bias.masked_fill_(cols > rows + window, -math.inf)
    for start in range(0, seq, window):
        end = min(start + window, seq)
        low, high = max(0, start - window), min(seq, end + (0 if causal else window))
        mask = None if bias is None else bias[: end - start, low - start + window : high - start + window]
        yield slice(start, end), slice(low, high), mask


class _SpanAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, window: int, causal: bool):
        out = torch.empty_like(q)
        lse = []
        for rows, keys, mask in pieces(q.shape[2], window, causal, q):
            o, rows_lse = _FORWARD(q[:, :, rows], k[:, :, keys], v[:, :, keys], 0.0, False, attn_mask=mask)
            out[:, :, rows] = o
            lse.append(rows_lse)
        ctx.save_for_backward(q, k, v, out, torch.cat(lse, dim=2))
        ctx.window, ctx.causal = window, causal
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_q, grad_k, grad_v = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for rows, keys, mask in pieces(q.shape[2], ctx.window, ctx.causal, q):
            dq, dk, dv = _BACKWARD(
                grad_out[:, :, rows],
                q[:, :, rows],
                k[:, :, keys],
                v[:, :, keys],
                out[:, :, rows],
                lse[:, :, rows],
                0.0,
                False,
                attn_mask=mask,
            )
            grad_q[:, :, rows] = dq
            grad_k[:, :, keys] += dk
            grad_v[:, :, keys] += dv
        return grad_q, grad_k, grad_v, None, None


def span_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: int, causal: bool) -> torch.Tensor:
    """Sliding-window softmax attention ``(B, H, N, Dh)`` in and out, O(n) memory; needs :func:`available`."""
    return _SpanAttention.apply(q, k.to(q.dtype), v.to(q.dtype), window, causal)
