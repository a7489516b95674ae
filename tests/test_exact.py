"""The two exact variants agree, and full_math exposes its probabilities."""

from __future__ import annotations

import pytest
import torch
from helpers import build_variant, qkv


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("with_mask", [False, True])
def test_full_matches_full_math(causal, with_mask):
    q, k, v = qkv(2, 200)
    mask = None
    if with_mask:
        mask = torch.ones(2, 200, dtype=torch.bool)
        mask[1, 150:] = False
    fused = build_variant("full", causal=causal)(q, k, v, mask)
    math_ = build_variant("full_math", causal=causal)(q, k, v, mask)
    real = torch.ones_like(fused, dtype=torch.bool) if mask is None else mask[:, None, :, None].expand_as(fused)
    torch.testing.assert_close(fused[real], math_[real], atol=1e-5, rtol=1e-5)


def test_full_math_probabilities_are_a_distribution_over_allowed_keys():
    attn = build_variant("full_math", causal=True, keep_probs=True)
    q, k, v = qkv(1, 32)
    mask = torch.ones(1, 32, dtype=torch.bool)
    mask[0, 20:] = False
    out = attn(q, k, v, mask)
    probs = attn.attention_probs(q, k, mask)
    torch.testing.assert_close(probs, attn.last_probs)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 2, 32))
    assert (probs.triu(1) == 0).all(), "causal: no weight on future keys"
    assert (probs[..., 20:] == 0).all(), "no weight on padded keys"
    torch.testing.assert_close(out, probs @ v)
