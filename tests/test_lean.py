"""Lean kernels: the custom autograd paths give the dense references' values and gradients, and save O(n)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import (
    DIRECTIONS_AND_PASSES,
    build_variant,
    feature_kernel_in_small_pieces,
    padding_mask,
    qkv,
    values_and_grads,
)

import variants._blocks
import variants._linear
from variants._feature_map import FeatureMapAttention
from variants.full_math import softmax_attention_probs


def local_pattern(seq: int, window: int, causal: bool) -> torch.Tensor:
    chunk = torch.arange(seq) // window
    delta = chunk[:, None] - chunk[None, :]
    if causal:
        return (delta >= 0) & (delta <= 1) & (torch.arange(seq)[:, None] >= torch.arange(seq)[None, :])
    return delta.abs() <= 1


BLOCKED = {
    "local bidir": ({"name": "local", "window": 16}, False),
    "local causal": ({"name": "local", "window": 16}, True),
    "sparse": ({"name": "sparse", "block_size": 16, "num_global": 5, "num_random": 2}, False),
    "sparse no globals": ({"name": "sparse", "block_size": 8, "num_global": 0, "num_random": 1}, False),
    "longformer bidir": ({"name": "longformer", "window": 16, "num_global": 5}, False),
    "longformer causal": ({"name": "longformer", "window": 16, "num_global": 5}, True),
    "longformer globals span blocks": ({"name": "longformer", "window": 8, "num_global": 19}, False),
    "longformer causal, globals span blocks": ({"name": "longformer", "window": 8, "num_global": 19}, True),
    "strided bidir": ({"name": "strided", "block": 16, "summary": 3}, False),
    "strided causal": ({"name": "strided", "block": 16, "summary": 3}, True),
}


def longformer_pattern(seq: int, window: int, num_global: int, causal: bool) -> torch.Tensor:
    """Window (as local's) plus global tokens: keys for all, and bidirectionally queries over all."""
    allowed = local_pattern(seq, window, causal)
    g = min(num_global, seq)
    if causal:
        allowed[:, :g] |= torch.ones(seq, g, dtype=torch.bool).tril()
    else:
        allowed[:, :g] = True
        allowed[:g, :] = True
    return allowed


def pattern_of(attn, seq: int) -> torch.Tensor:
    if attn.name == "local":
        return local_pattern(seq, attn.window, attn.causal)
    if attn.name == "longformer":
        return longformer_pattern(seq, attn.window, attn.num_global, attn.causal)
    return attn.dense_pattern(seq)


@pytest.mark.parametrize("chunk_elements", [1, variants._blocks.CHUNK_ELEMENTS])  # one block per chunk, or few
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("seq", [96, 101])
@pytest.mark.parametrize("case", list(BLOCKED))
def test_blocked_values_and_gradients_match_dense_reference(case, seq, with_mask, chunk_elements, monkeypatch):
    monkeypatch.setattr(variants._blocks, "CHUNK_ELEMENTS", chunk_elements)
    spec, causal = BLOCKED[case]
    attn = build_variant(spec["name"], causal=causal, **{k: v for k, v in spec.items() if k != "name"})
    q, k, v = qkv(2, seq)
    mask = padding_mask(2, seq) if with_mask else None
    allowed = pattern_of(attn, seq)[None, None] & (True if mask is None else mask[:, None, None, :])
    weights = torch.randn_like(q)
    ours = values_and_grads(lambda q, k, v: attn(q, k, v, mask), q, k, v, mask, weights)
    dense = values_and_grads(lambda q, k, v: softmax_attention_probs(q, k, allowed) @ v, q, k, v, mask, weights)
    real = slice(None) if mask is None else mask[:, None, :, None].expand_as(q)
    torch.testing.assert_close(ours[0][real], dense[0][real], atol=1e-5, rtol=1e-5)
    for name, mine, reference in zip("qkv", ours[1:], dense[1:], strict=True):
        torch.testing.assert_close(mine, reference, atol=1e-5, rtol=1e-5, msg=f"grad {name}")


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("case", list(BLOCKED))
def test_blocked_gradcheck_in_float64(case, dropout, monkeypatch):
    monkeypatch.setattr(variants._blocks, "CHUNK_ELEMENTS", 1)  # several chunks even at this size
    spec, causal = BLOCKED[case]
    hparams = {k: v for k, v in spec.items() if k != "name"}
    small = {
        "local": lambda: {"window": 4},
        "longformer": lambda: {"window": 4, "num_global": min(6, hparams["num_global"])},  # 6 > 4: span blocks
        "sparse": lambda: {"block_size": 4, "num_global": min(2, hparams["num_global"])},
        "strided": lambda: {"block": 4, "summary": 2},
    }
    hparams |= small[spec["name"]]()
    attn = build_variant(spec["name"], causal=causal, dropout=dropout, heads=1, dim_head=4, **hparams).double()
    seq = 14  # not a multiple of the block: internal padding too
    mask = torch.ones(2, seq, dtype=torch.bool)
    mask[1, 10:] = False
    q, k, v = (torch.randn(2, 1, seq, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))

    def run(q, k, v):
        torch.manual_seed(0)  # the same dropout mask on every evaluation
        return attn(q, k, v, mask) * mask[:, None, :, None]  # padded query rows are unspecified

    assert torch.autograd.gradcheck(run, (q, k, v), eps=1e-6, atol=1e-6)


def performer_dense(attn, q, k, v, mask):
    """Performer with the (n, n) weights phi(q) phi(k)^T formed explicitly, differentiated by plain autograd."""
    features = attn.features.to(q.dtype)
    query_logits = q @ features.T
    query_feat = torch.exp(query_logits - query_logits.amax(dim=-1, keepdim=True).detach())
    logits = k @ features.T - k.square().sum(dim=-1, keepdim=True) / (2 * math.sqrt(k.shape[-1]))
    if mask is not None:
        logits = logits.masked_fill(~mask[:, None, :, None], float("-inf"))
    key_feat = torch.exp(logits - logits.amax(dim=(-2, -1), keepdim=True))
    weights = query_feat @ key_feat.transpose(-2, -1)
    if attn.causal:
        weights = weights.tril()
    return (weights @ v) / weights.sum(dim=-1, keepdim=True)


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize(("causal", "passes"), DIRECTIONS_AND_PASSES)
def test_performer_values_and_gradients_match_dense_weights(causal, with_mask, passes, monkeypatch):
    feature_kernel_in_small_pieces(monkeypatch, chunk_elements=1000, passes=passes)
    torch.manual_seed(0)
    attn = build_variant("performer", causal=causal, nb_features=24, chunk_size=16).double()
    seq = 75  # chunks of 16 with a ragged end
    q, k, v = (t.double() for t in qkv(2, seq, scale=2.0))
    mask = padding_mask(2, seq) if with_mask else None
    weights = torch.randn_like(q)
    ours = values_and_grads(lambda q, k, v: attn(q, k, v, mask), q, k, v, mask, weights)
    dense = values_and_grads(lambda q, k, v: performer_dense(attn, q, k, v, mask), q, k, v, mask, weights)
    for name, mine, reference in zip(["out", "q", "k", "v"], ours, dense, strict=True):
        torch.testing.assert_close(mine, reference, atol=1e-10, rtol=1e-8, msg=name)


@pytest.mark.parametrize(("causal", "passes"), DIRECTIONS_AND_PASSES)
def test_performer_gradcheck_in_float64(causal, passes, monkeypatch):
    feature_kernel_in_small_pieces(monkeypatch, chunk_elements=50, passes=passes)
    torch.manual_seed(0)
    attn = build_variant("performer", causal=causal, nb_features=6, chunk_size=4, heads=1, dim_head=4).double()
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, 8:] = False
    inputs = [torch.randn(2, 1, 11, 4, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    assert torch.autograd.gradcheck(lambda q, k, v: attn(q, k, v, mask), inputs, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize(("causal", "passes"), DIRECTIONS_AND_PASSES)
@pytest.mark.parametrize("name", ["based", "hedgehog"])
def test_learned_feature_maps_gradcheck_in_float64_parameters_included(name, causal, passes, monkeypatch):
    """The kernel projects q and k chunk by chunk and pulls back the projection's gradient too (no autograd copy)."""
    feature_kernel_in_small_pieces(monkeypatch, chunk_elements=50, passes=passes)
    torch.manual_seed(0)
    extra = {"feature_dim": 3, "window": 4} if name == "based" else {}
    attn = build_variant(name, causal=causal, chunk_size=4, heads=1, dim_head=4, **extra).double()
    names = [n for n, _ in attn.named_parameters()]
    assert names, "a learned map has parameters"
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, 8:] = False
    qkv_inputs = [torch.randn(2, 1, 11, 4, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    parameters = [p.detach().clone().requires_grad_() for p in attn.parameters()]

    def run(q, k, v, *parameters):
        return torch.func.functional_call(attn, dict(zip(names, parameters, strict=True)), (q, k, v, mask))

    assert torch.autograd.gradcheck(run, (*qkv_inputs, *parameters), eps=1e-6, atol=1e-6)


def saved_bytes(fn) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward pass of ``fn()``."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(storages.values())


@pytest.mark.parametrize(
    ("name", "causal"),
    [
        ("local", False),
        ("local", True),
        ("sparse", False),
        ("longformer", False),
        ("longformer", True),
        ("strided", False),
        ("strided", True),
        ("linear", False),
        ("linear", True),
        ("performer", False),
        ("performer", True),
        ("hedgehog", False),
        ("hedgehog", True),
        ("reformer", False),
    ],
)
def test_lean_variants_save_only_inputs_output_and_row_statistics(name, causal):
    seq = 1024
    attn = build_variant(name, causal=causal)
    q, k, v = qkv(2, seq, requires_grad=True)
    one = q.numel() * q.element_size()  # one (B, H, N, Dh) tensor
    saved = saved_bytes(lambda: attn(q, k, v))
    # q, k, v and the output, plus O(n) row statistics and O(1) state: far below one (n, window) score matrix. A
    # causal feature map's one-pass backward also keeps the key summary before each group, O(n) and bounded.
    summaries = variants._linear.BOUNDARY_INPUTS if causal and isinstance(attn, FeatureMapAttention) else 0
    assert saved <= (5 + summaries) * one, f"{name} saved {saved / one:.2f}x an input's size"
