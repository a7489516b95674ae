"""The fused span kernel of ``local``'s window (variants/_spans.py): exact values and gradients, O(n) backward."""

from __future__ import annotations

import pytest
import torch
from helpers import build_variant
from test_lean import local_pattern
from torch.utils._python_dispatch import TorchDispatchMode

from variants import _spans as spans

pytestmark = pytest.mark.skipif(not spans.available(torch.empty(0)), reason="this PyTorch has no CPU flash ops")


def dense_local(q, k, v, window: int, causal: bool) -> torch.Tensor:
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    allowed = local_pattern(q.shape[2], window, causal)
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seq", [64, 70, 5])  # whole chunks, a partial last chunk, shorter than one chunk
def test_local_without_a_mask_runs_the_span_kernel_and_equals_dense_attention(seq, causal):
    attn = build_variant("local", causal=causal, window=16, heads=2, dim_head=8).double()
    q, k, v = (torch.randn(2, 2, seq, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = attn(q, k, v)
    assert out.grad_fn.name().endswith("_SpanAttentionBackward")  # not the blocked kernel
    expected = dense_local(q, k, v, 16, causal)
    torch.testing.assert_close(out, expected)
    grad = torch.randn_like(out)
    torch.testing.assert_close(
        torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(expected, (q, k, v), grad)
    )


@pytest.mark.parametrize("causal", [False, True])
def test_span_kernel_gradcheck_in_float64(causal):
    q, k, v = (torch.randn(1, 2, 14, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    run = lambda q, k, v: spans.span_attention(q, k, v, window=4, causal=causal)  # noqa: E731
    assert torch.autograd.gradcheck(run, (q, k, v), eps=1e-6, atol=1e-6)


class WholeTensorOps(TorchDispatchMode):
    """Counts the ops whose output is as large as q: a per-chunk one makes the backward O(n^2 / window)."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.count = numel, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outputs = out if isinstance(out, tuple | list) else (out,)
        self.count += sum(isinstance(t, torch.Tensor) and t.numel() == self.numel for t in outputs)
        return out


@pytest.mark.parametrize("causal", [False, True])
def test_the_backward_writes_whole_tensors_a_fixed_number_of_times_whatever_the_length(causal):
    """Autograd's backward of a slice zero-fills a gradient of the whole tensor: 32 chunks of slices cost 96 such
    tensors. The span kernel allocates its three gradients once and writes each chunk's part in place."""
    q, k, v = (torch.randn(1, 2, 32 * 8, 4, requires_grad=True) for _ in range(3))
    out = spans.span_attention(q, k, v, window=8, causal=causal)
    with WholeTensorOps(q.numel()) as ops:
        out.backward(torch.randn_like(out))
    assert ops.count <= 8, ops.count
