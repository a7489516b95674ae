"""The effective attention matrix of any variant, read through the contract alone.

Every variant mixes values linearly: ``out = A v`` for a matrix ``A`` that
depends on ``q``, ``k``, the mask, the module's own parameters and its random
state, but not on ``v``. Feeding one-hot values (``v = I``, ``dim_head``
columns at a time) therefore reads ``A`` column block by column block with no
per-variant code, padding and causal structure included. A variant may offer a
faster exact path (``full_math.attention_probs``); the tests check both agree.
"""

from __future__ import annotations

import torch

import variants


@torch.no_grad()
def effective_matrix(core: variants.Attention, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None):
    """The ``(B, H, N, M)`` matrix ``A`` with ``core(q, k, v, mask) == A @ v`` for every ``v``.

    M = N for self-attention; a core built with ``cross=True`` gives the rectangular matrix of N queries
    over M keys. ``core`` must be in eval mode (attention dropout would make ``A`` random per call).
    Costs ``ceil(M / dim_head)`` forward calls of the variant.
    """
    if core.training and core.dropout > 0:
        raise ValueError(f"{core.name}: call .eval() first; attention dropout makes A differ from call to call")
    batch, heads, _, dim_head = q.shape
    seq = k.shape[2]  # the keys: one column of A per key
    columns = []
    for start in range(0, seq, dim_head):
        width = min(dim_head, seq - start)
        one_hot = torch.zeros(batch, heads, seq, dim_head, dtype=q.dtype, device=q.device)
        rows = torch.arange(width, device=q.device)
        one_hot[:, :, start + rows, rows] = 1.0  # value j of this block is the unit vector e_(j - start)
        columns.append(core(q, k, one_hot, mask)[..., :width])  # (B, H, N, width): columns start..start+width of A
    return torch.cat(columns, dim=-1)


def linearity_residual(matrix: torch.Tensor, out: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None):
    """``max |out - A v| / max |out|`` over real query rows, ``out`` the variant's output on ``v``: ~0 when linear."""
    diff = out - matrix @ v
    if mask is not None:
        real = mask[:, None, :, None]
        out, diff = out * real, diff * real
    return float(diff.abs().max() / out.abs().max().clamp_min(1e-30))


@torch.no_grad()
def exact_matrix(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None, *, causal: bool = False):
    """Exact softmax attention weights ``(B, H, N, M)`` on the same inputs (``full_math``'s fast path)."""
    heads, dim_head = q.shape[1], q.shape[-1]
    cross = q.shape[2] != k.shape[2]
    reference = variants.build(
        "full_math", heads=heads, dim_head=dim_head, max_seq_len=None, causal=causal, cross=cross
    )
    return reference.attention_probs(q, k, mask)
