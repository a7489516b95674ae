"""Equivalence tests proving each efficient variant is the algorithm it claims to be."""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers import build_variant, qkv

import variants
from variants.full_math import softmax_attention_probs


def padding_mask(batch: int, seq: int) -> torch.Tensor:
    mask = torch.ones(batch, seq, dtype=torch.bool)
    mask[-1, seq * 2 // 3 :] = False
    return mask


def assert_close_on_real(out, ref, mask, atol=1e-5):
    real = torch.ones_like(out, dtype=torch.bool) if mask is None else mask[:, None, :, None].expand_as(out)
    torch.testing.assert_close(out[real], ref[real], atol=atol, rtol=1e-5)


def dense_reference(q, k, v, allowed, mask):
    """Textbook attention restricted to ``allowed`` (n, n) and real keys."""
    full_allowed = allowed[None, None] & (mask[:, None, None, :] if mask is not None else True)
    return softmax_attention_probs(q, k, full_allowed) @ v


# ---------------------------------------------------------------- local


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seq", [64, 100])
def test_local_with_window_covering_sequence_equals_full(causal, seq):
    q, k, v = qkv(2, seq)
    mask = padding_mask(2, seq)
    local = build_variant("local", window=seq, causal=causal)
    full = build_variant("full", causal=causal)
    assert_close_on_real(local(q, k, v, mask), full(q, k, v, mask), mask)


def local_pattern(seq: int, window: int, causal: bool) -> torch.Tensor:
    chunk = torch.arange(seq) // window
    delta = chunk[:, None] - chunk[None, :]  # query chunk - key chunk
    if causal:
        return (delta >= 0) & (delta <= 1) & (torch.arange(seq)[:, None] >= torch.arange(seq)[None, :])
    return delta.abs() <= 1


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seq", [96, 101])  # a multiple of the window and not
def test_local_matches_dense_banded_reference(causal, seq):
    q, k, v = qkv(2, seq)
    mask = padding_mask(2, seq)
    out = build_variant("local", window=16, causal=causal)(q, k, v, mask)
    ref = dense_reference(q, k, v, local_pattern(seq, 16, causal), mask)
    assert_close_on_real(out, ref, mask)


def test_local_window_is_validated():
    with pytest.raises(variants.HyperparameterError, match="window=0"):
        build_variant("local", window=0)


# ---------------------------------------------------------------- sparse


@pytest.mark.parametrize(
    ("seq", "block_size", "num_global", "num_random"),
    [(128, 16, 4, 2), (203, 16, 5, 3), (64, 16, 0, 0), (50, 8, 20, 1), (40, 64, 2, 2)],
)
def test_sparse_equals_its_dense_masked_reference(seq, block_size, num_global, num_random):
    q, k, v = qkv(2, seq)
    mask = padding_mask(2, seq)
    attn = build_variant("sparse", block_size=block_size, num_global=num_global, num_random=num_random)
    ref = dense_reference(q, k, v, attn.dense_pattern(seq), mask)
    assert_close_on_real(attn(q, k, v, mask), ref, mask)


def test_sparse_pattern_is_sparse_reproducible_and_seeded():
    seq = 1024
    pattern = build_variant("sparse", block_size=32, num_global=8, num_random=2, seed=1).dense_pattern(seq)
    again = build_variant("sparse", block_size=32, num_global=8, num_random=2, seed=1).dense_pattern(seq)
    other = build_variant("sparse", block_size=32, num_global=8, num_random=2, seed=2).dense_pattern(seq)
    assert torch.equal(pattern, again)
    assert not torch.equal(pattern, other)
    expected_density = ((3 + 2) * 32 * seq + 2 * 8 * seq) / seq**2  # upper bound: local + random + global
    assert pattern.float().mean() <= expected_density
    non_global_rows = pattern[8:, 8:]
    per_row = non_global_rows.sum(1)
    assert per_row.max() <= 5 * 32, "a query sees at most 3 local + 2 random blocks besides the globals"


# ---------------------------------------------------------------- linformer


@pytest.mark.parametrize("share_kv", [False, True])
def test_linformer_with_k_equal_n_and_identity_projections_equals_full(share_kv):
    seq = 96
    q, k, v = qkv(2, seq)
    attn = build_variant("linformer", max_seq_len=seq, k=seq, share_kv=share_kv)
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.eye(seq))
    torch.testing.assert_close(attn(q, k, v), build_variant("full")(q, k, v), atol=1e-5, rtol=1e-5)


def test_linformer_sharing_and_shorter_inputs():
    separate = build_variant("linformer", max_seq_len=512, k=32)
    shared = build_variant("linformer", max_seq_len=512, k=32, share_kv=True)
    assert sum(p.numel() for p in separate.parameters()) == 2 * 32 * 512
    assert sum(p.numel() for p in shared.parameters()) == 32 * 512
    q, k, v = qkv(1, 100)  # shorter than max_seq_len
    assert shared(q, k, v).shape == q.shape


def test_linformer_refuses_causal_and_too_long_inputs():
    with pytest.raises(variants.UnsupportedError, match="'linformer' cannot be causal; variants that can:"):
        build_variant("linformer", causal=True)
    attn = build_variant("linformer", max_seq_len=64, k=16)
    with pytest.raises(variants.UnsupportedError, match="exceeds max_seq_len=64"):
        attn(*qkv(1, 65))
    with pytest.raises(variants.UnsupportedError, match="needs a fixed max_seq_len"):
        variants.build("linformer", heads=2, dim_head=16, max_seq_len=None)


# ---------------------------------------------------------------- performer


def performer_error(nb_features: int, causal: bool, seeds: int = 4) -> float:
    q, k, v = (t * 0.5 for t in qkv(2, 256, seed=11))
    exact = build_variant("full", causal=causal)(q, k, v)
    errors = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        approx = build_variant("performer", nb_features=nb_features, causal=causal)(q, k, v)
        errors.append(((approx - exact).norm() / exact.norm()).item())
    return sum(errors) / len(errors)


@pytest.mark.parametrize("causal", [False, True])
def test_performer_error_shrinks_as_features_grow(causal):
    errors = {m: performer_error(m, causal) for m in (16, 64, 256, 1024)}
    values = list(errors.values())
    assert all(a > b for a, b in itertools.pairwise(values)), errors
    assert values[-1] < 0.5 * values[0], errors
    assert values[-1] < 0.15, errors


def test_performer_causal_chunks_equal_one_quadratic_pass():
    """Chunked prefix sums give the same result as masking phi(Q) phi(K)^T directly."""
    q, k, v = qkv(2, 150)
    torch.manual_seed(0)
    attn = build_variant("performer", causal=True, nb_features=64, chunk_size=32)
    features = attn.features
    q_feat = torch.exp(q @ features.T - (q @ features.T).amax(-1, keepdim=True))
    k_logit = k @ features.T - k.square().sum(-1, keepdim=True) * (0.5 / 4.0)
    k_feat = torch.exp(k_logit - k_logit.amax(dim=(-2, -1), keepdim=True))
    weights = (q_feat @ k_feat.transpose(-2, -1)).tril()
    reference = (weights @ v) / weights.sum(-1, keepdim=True)
    torch.testing.assert_close(attn(q, k, v), reference, atol=1e-5, rtol=1e-4)
    for chunk in (1, 7, 150, 1000):
        attn.chunk_size = chunk
        torch.testing.assert_close(attn(q, k, v), reference, atol=1e-5, rtol=1e-4)


def test_performer_redraws_features_only_on_schedule():
    attn = build_variant("performer", redraw_interval=3)
    q, k, v = qkv(1, 32)
    first = attn.features.clone()
    attn(q, k, v)
    attn.train()(q, k, v)
    assert torch.equal(attn.features, first), "forward never changes the features"
    attn.on_train_step(1)
    attn.on_train_step(2)
    assert torch.equal(attn.features, first)
    attn.on_train_step(3)
    assert not torch.equal(attn.features, first)
    never = build_variant("performer")
    before = never.features.clone()
    never.on_train_step(1000)
    assert torch.equal(never.features, before)


def test_performer_features_are_orthogonal_within_blocks():
    attn = build_variant("performer", nb_features=16)  # one block of dim_head=16 rows
    rows = torch.nn.functional.normalize(attn.features, dim=1)
    torch.testing.assert_close(rows @ rows.T, torch.eye(16), atol=1e-5, rtol=0)
