"""Building blocks shared by the blocked variants (local, sparse).

Sequences are cut into blocks; each query block attends to a small set of key
blocks gathered next to it, so work and memory grow linearly in length.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F


def pad_to_multiple(x: torch.Tensor, multiple: int, *, dim: int, value: float | bool = 0) -> torch.Tensor:
    """Pad ``x`` at the end of ``dim`` so its length is a multiple of ``multiple``."""
    remainder = -x.shape[dim] % multiple
    if remainder == 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - (dim % x.dim())) + [0, remainder]
    return F.pad(x, pad, value=value)


def key_validity(mask: torch.Tensor | None, seq: int, padded: int, device: torch.device) -> torch.Tensor:
    """Bool ``(B|1, padded)``: True for real keys, False for user and internal padding."""
    valid = torch.ones(1, seq, dtype=torch.bool, device=device) if mask is None else mask
    return pad_to_multiple(valid, padded, dim=1, value=False) if padded > seq else valid


def neighbour_blocks(x: torch.Tensor, *, dim: int, before: int, after: int, fill: float | bool = 0) -> torch.Tensor:
    """Join each block with ``before`` blocks behind it and ``after`` ahead of it.

    ``x`` has blocks along ``dim`` and their tokens along ``dim + 1``; the result
    has ``(before + 1 + after) * w`` tokens per block. Blocks past either end are
    filled with ``fill`` (callers mask them out).
    """
    nb = x.shape[dim]
    edge_shape = list(x.shape)
    edge_shape[dim] = 1
    edge = torch.full(edge_shape, fill, dtype=x.dtype, device=x.device)
    padded = torch.cat([edge] * before + [x] + [edge] * after, dim=dim)
    return torch.cat([padded.narrow(dim, offset, nb) for offset in range(before + 1 + after)], dim=dim + 1)


def scale_keys(k: torch.Tensor) -> torch.Tensor:
    """Keys times ``1/sqrt(Dh)``, done before they are gathered into windows."""
    return k * (1.0 / math.sqrt(k.shape[-1]))


ScoreMask = Callable[[torch.Tensor], None]


def masked_fill_disallowed(allowed: torch.Tensor) -> ScoreMask:
    """A score mask that fills every position where ``allowed`` is False."""

    def fill(scores: torch.Tensor) -> None:
        scores.masked_fill_(~allowed, torch.finfo(scores.dtype).min)

    return fill


def blocked_softmax_attention(
    q_blocks: torch.Tensor,
    k_windows: torch.Tensor,
    v_windows: torch.Tensor,
    *,
    mask_scores: ScoreMask,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Softmax attention of each query block over its own key window.

    ``q_blocks`` ``(B, H, nb, w, Dh)``, ``k_windows``/``v_windows`` ``(B, H, nb, K, Dh)``.
    ``mask_scores`` fills disallowed ``(B, H, nb, w, K)`` scores in place (with the
    dtype's min, so fully masked rows stay finite); callers that know their
    structure touch only the blocks that need it. The scores are the only
    ``O(n K)`` intermediate. Keys must come pre-scaled by ``1/sqrt(Dh)``
    (:func:`scale_keys`): scaling ``n x Dh`` keys once is cheaper than scaling
    ``n x K`` scores forward and backward, and keeps no scaled copy of q.
    """
    scores = q_blocks @ k_windows.transpose(-1, -2)  # (B, H, nb, w, K); callers pre-scale the keys
    mask_scores(scores)
    probs = scores.softmax(dim=-1)
    if dropout_p > 0:
        probs = F.dropout(probs, p=dropout_p)
    return probs.to(v_windows.dtype) @ v_windows  # (B, H, nb, w, Dh)
