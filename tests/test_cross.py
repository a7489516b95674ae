"""The cross-attention contract: queries of length N over keys and values of length M, every capable variant.

A variant that sets ``supports_cross`` is checked here with no new test code;
one that does not is refused at build time with the names of those that can.
"""

from __future__ import annotations

import pytest
import torch
from helpers import DIM_HEAD, HEADS, build_variant

import variants
from variants._feature_map import FeatureMapAttention

CROSS = variants.cross_names()
EXACT = [n for n in CROSS if variants.get(n).family == "exact"]
FEATURE_MAPS = [n for n in CROSS if issubclass(variants.get(n), FeatureMapAttention)]
SHAPES = [(24, 40), (40, 24)]  # (N queries, M keys): a longer and a shorter source


def cross_inputs(batch: int, queries: int, keys: int, *, seed: int = 0, requires_grad: bool = False):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, HEADS, queries, DIM_HEAD, generator=gen)
    k, v = (torch.randn(batch, HEADS, keys, DIM_HEAD, generator=gen) for _ in range(2))
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


def key_mask(batch: int, keys: int) -> torch.Tensor:
    mask = torch.ones(batch, keys, dtype=torch.bool)
    mask[0, keys - 7 :] = False  # the first source is padded at its end
    return mask


def build_cross(name: str) -> variants.Attention:
    return build_variant(name, cross=True)


def test_the_capable_variants_are_the_exact_linformer_and_position_free_feature_maps():
    assert CROSS == ["full", "full_math", "hedgehog", "linear", "linformer", "performer"]


@pytest.mark.parametrize("name", sorted(set(variants.names()) - set(CROSS)))
def test_a_variant_that_cannot_is_refused_at_build_time_naming_those_that_can(name):
    with pytest.raises(variants.UnsupportedError, match=r"cannot attend across two sequences.*can: full, full_math"):
        build_cross(name)


def test_cross_attention_is_never_causal_and_a_self_attention_build_rejects_other_lengths():
    with pytest.raises(variants.UnsupportedError, match="cross-attention here is not causal"):
        build_variant("full", cross=True, causal=True)
    q, k, v = cross_inputs(1, 24, 40)
    with pytest.raises(ValueError, match="build it with cross=True"):
        build_variant("full")(q, k, v)


@pytest.mark.parametrize("queries, keys", SHAPES)
@pytest.mark.parametrize("name", CROSS)
def test_shapes_and_padding_among_the_keys(name, queries, keys):
    attn = build_cross(name).eval()
    q, k, v = cross_inputs(2, queries, keys)
    mask = key_mask(2, keys)
    out = attn(q, k, v, mask)
    assert out.shape == q.shape and torch.isfinite(out).all()
    k2, v2 = k.clone(), v.clone()
    k2[0, :, ~mask[0]] = 1e3 * torch.randn_like(k2[0, :, ~mask[0]])  # padded keys and values: any content
    v2[0, :, ~mask[0]] = 1e3
    torch.testing.assert_close(attn(q, k2, v2, mask), out, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"mask must be a bool tensor over the keys"):
        attn(q, k, v, torch.ones(2, queries, dtype=torch.bool))


@pytest.mark.parametrize("name", CROSS)
def test_gradients_reach_queries_keys_values_and_every_parameter(name):
    attn = build_cross(name)
    q, k, v = cross_inputs(2, 24, 40, requires_grad=True)
    out = attn(q, k, v, key_mask(2, 40))
    (out * torch.randn_like(out)).sum().backward()
    for label, t in (("q", q), ("k", k), ("v", v)):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0, label
    for pname, p in attn.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", CROSS)
def test_each_sequence_of_a_batch_is_independent(name):
    attn = build_cross(name).eval()
    q, k, v = cross_inputs(3, 24, 40)
    mask = key_mask(3, 40)
    together = attn(q, k, v, mask)
    alone = attn(q[1:2], k[1:2], v[1:2], mask[1:2])
    torch.testing.assert_close(together[1:2], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", CROSS)
def test_bf16_autocast_stays_finite_and_close(name):
    attn = build_cross(name).eval()
    q, k, v = cross_inputs(2, 24, 40)
    mask = key_mask(2, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = attn(q, k, v, mask)
    assert torch.isfinite(low).all()
    torch.testing.assert_close(low.float(), attn(q, k, v, mask), atol=0.1, rtol=0.1)


@pytest.mark.parametrize("queries, keys", SHAPES)
@pytest.mark.parametrize("name", EXACT)
def test_exact_variants_equal_textbook_cross_attention(name, queries, keys):
    q, k, v = cross_inputs(2, queries, keys)
    mask = key_mask(2, keys)
    scores = (q @ k.transpose(-2, -1)) / DIM_HEAD**0.5
    reference = scores.masked_fill(~mask[:, None, None, :], float("-inf")).softmax(-1) @ v
    torch.testing.assert_close(build_cross(name)(q, k, v, mask), reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("queries, keys", SHAPES)
@pytest.mark.parametrize("name", FEATURE_MAPS)
def test_feature_maps_equal_their_own_formula_over_a_source_of_another_length(name, queries, keys):
    attn = build_cross(name).eval()
    q, k, v = cross_inputs(2, queries, keys)
    mask = key_mask(2, keys)
    with torch.no_grad():
        qi, ki = attn.feature_inputs(q, k)
        query_feat = attn.query_feature_rows(qi, 0, queries)
        key_feat = attn.key_logit_rows(ki, 0, keys).exp() * mask[:, None, :, None]
        reference = (query_feat @ (key_feat.transpose(-2, -1) @ v)) / (query_feat @ key_feat.sum(-2)[..., None])
        torch.testing.assert_close(attn(q, k, v, mask), reference, atol=1e-5, rtol=1e-4)


def test_linformer_projects_the_source_and_refuses_one_longer_than_it_was_built_for():
    attn = build_variant("linformer", cross=True, k=16, max_seq_len=64)
    q, k, v = cross_inputs(1, 100, 40)  # the queries may be longer than the source ...
    assert attn(q, k, v).shape == q.shape
    q, k, v = cross_inputs(1, 24, 80)  # ... but the source must fit its projection
    with pytest.raises(variants.UnsupportedError, match="exceeds max_seq_len=64"):
        attn(q, k, v)


@pytest.mark.parametrize("name", CROSS)
def test_the_maps_reader_gives_each_cross_variant_its_rectangular_matrix(name):
    from runners.approximation.matrix import effective_matrix, exact_matrix, linearity_residual

    attn = build_cross(name).eval()
    q, k, v = cross_inputs(2, 24, 40)
    mask = key_mask(2, 40)
    matrix = effective_matrix(attn, q, k, mask)
    assert matrix.shape == (2, HEADS, 24, 40)
    with torch.no_grad():
        assert linearity_residual(matrix, attn(q, k, v, mask), v) < 1e-5  # out == A v
    assert matrix[0, :, :, ~mask[0]].abs().max() < 1e-6  # no weight on padded keys
    if name in EXACT:
        torch.testing.assert_close(matrix, exact_matrix(q, k, mask), atol=1e-5, rtol=1e-5)
