"""State kept between tokens when decoding: KV caches, windows, and feature-map summaries.

Three kinds of state cover the decoding variants. Softmax attention keeps
every key and value seen (a KV cache that grows with n); a sliding window
keeps only the keys its next query can see; linear (feature-map) attention
keeps a constant ``(m, Dh)`` summary ``sum_j phi(k_j) v_j^T`` and ``sum_j
phi(k_j)``, exactly what its causal prefix scan carries between chunks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from variants._base import State
from variants._linear import TINY


def state_bytes(state: State) -> int:
    """Memory the state holds, in bytes (tensors only)."""
    return sum(t.numel() * t.element_size() for t in state.values() if isinstance(t, torch.Tensor))


def empty_cache(batch: int, heads: int, dim_head: int, device, dtype) -> State:
    """A KV cache holding no token yet."""
    empty = torch.empty(batch, heads, 0, dim_head, device=device, dtype=dtype)
    return {"k": empty, "v": empty.clone(), "position": torch.zeros((), dtype=torch.long, device=device)}


def append_to_cache(state: State, k: torch.Tensor, v: torch.Tensor, *, keep: int | None = None) -> State:
    """The cache with ``k``, ``v`` appended, cut to its last ``keep`` tokens (None: all)."""
    keys = torch.cat([state["k"], k.to(state["k"].dtype)], dim=2)
    values = torch.cat([state["v"], v.to(state["v"].dtype)], dim=2)
    if keep is not None and keys.shape[2] > keep:
        keys, values = keys[:, :, -keep:].contiguous(), values[:, :, -keep:].contiguous()
    return {"k": keys, "v": values, "position": state["position"] + k.shape[2]}


def cache_from_prompt(k: torch.Tensor, v: torch.Tensor, *, keep: int | None = None) -> State:
    """The cache after a whole prompt: its keys and values (the last ``keep`` of them)."""
    start = 0 if keep is None else max(0, k.shape[2] - keep)
    position = torch.tensor(k.shape[2], dtype=torch.long, device=k.device)
    return {"k": k[:, :, start:].contiguous(), "v": v[:, :, start:].contiguous(), "position": position}


def softmax_over_cache(q: torch.Tensor, state: State, *, fused: bool) -> torch.Tensor:
    """One query ``(B, H, 1, Dh)`` attending to every cached key: no mask, all are in its past."""
    keys, values = state["k"].to(q.dtype), state["v"].to(q.dtype)
    if fused:
        return F.scaled_dot_product_attention(q, keys, values)
    scores = (q @ keys.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    return scores.softmax(dim=-1) @ values


def empty_summary(batch: int, heads: int, num_features: int, dim_head: int, device, dtype) -> State:
    """Feature-map state before any token: zero summary and normalizer, stabilizer at the dtype's minimum."""
    dtype = torch.promote_types(dtype, torch.float32)  # sums over n keys: fp32 at least
    return {
        "context": torch.zeros(batch, heads, num_features, dim_head, device=device, dtype=dtype),
        "norm": torch.zeros(batch, heads, num_features, device=device, dtype=dtype),
        "running": torch.full((batch, heads, 1, 1), torch.finfo(dtype).min, device=device, dtype=dtype),
    }


def add_to_summary(state: State, key_logits: torch.Tensor, v: torch.Tensor, *, signed: bool = False) -> State:
    """Fold keys ``exp(key_logits)`` ``(B, H, T, m)`` and values ``(B, H, T, Dh)`` into the summary.

    Key features are kept relative to a running maximum of their logits (the
    stabilizer of the causal kernel in :mod:`variants._linear`), rescaling the
    summary when it grows; it cancels in the normalized output. ``signed``:
    ``key_logits`` are the features themselves (see ``linear_attention``).
    """
    dtype = state["context"].dtype
    key_logits, v = key_logits.to(dtype), v.to(dtype)
    if signed:
        return state | {
            "context": state["context"] + key_logits.transpose(-2, -1) @ v,
            "norm": state["norm"] + key_logits.sum(dim=-2),
        }
    floor = torch.finfo(dtype).min
    running = torch.maximum(state["running"], key_logits.amax(dim=(-2, -1), keepdim=True).clamp_min(floor))
    decay = torch.exp(state["running"] - running)
    key_feat = torch.exp(key_logits - running)
    return {
        "context": state["context"] * decay + key_feat.transpose(-2, -1) @ v,
        "norm": state["norm"] * decay[..., 0] + key_feat.sum(dim=-2),
        "running": running,
    }


def read_summary(query_feat: torch.Tensor, state: State) -> torch.Tensor:
    """Normalized ``phi(q) . summary`` for queries ``(B, H, T, m)``: zeros where every feature underflowed."""
    query_feat = query_feat.to(state["context"].dtype)
    den = query_feat @ state["norm"][..., None]
    return (query_feat @ state["context"]) / den.clamp_min(TINY)
