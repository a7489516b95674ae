"""The modern linear-attention family against materialized definitions (and flash-linear-attention's naive code).

Values and q/k/v gradients to 1e-5 in fp32, bidirectional and causal, with and without a padding mask, at a
length that is not a multiple of any chunk, block or window used.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from helpers import (
    DIRECTIONS_AND_PASSES,
    assert_same,
    build_variant,
    feature_kernel_in_small_pieces,
    padding_mask,
    qkv,
    values_and_grads,
)

import variants._linear
from variants._masks import dense_allowed
from variants.full_math import softmax_attention_probs

SEQ = 75


def allowed_weights(weights: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
    """``(B, H, N, N)`` weights with padded keys and (causal) future keys set to zero."""
    allowed = dense_allowed(mask, weights.shape[-1], causal=causal, device=weights.device)
    return weights if allowed is None else weights * allowed


def normalized(weights: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (weights @ v) / weights.sum(dim=-1, keepdim=True).clamp_min(variants._linear.TINY)


def cosformer_dense(attn, q, k, v, mask, causal):
    """``relu(q_i) . relu(k_j) cos(pi/2 (i - j) / M)``, masked and normalized by rows: cosFormer's definition."""
    seq = q.shape[2]
    horizon = attn.max_seq_len if causal else seq
    positions = torch.arange(seq, dtype=q.dtype)
    distance = (positions[:, None] - positions[None, :]) * (math.pi / (2 * horizon))
    weights = (q.relu() @ k.relu().transpose(-2, -1)) * distance.cos()
    return normalized(allowed_weights(weights, mask, causal), v)


def hedgehog_dense(attn, q, k, v, mask, causal):
    """``phi(q) . phi(k)`` with ``phi(x) = softmax([2 (W x + b), -2 (W x + b)])`` per head, materialized."""

    def phi(x: torch.Tensor, which: int) -> torch.Tensor:
        z = 2 * (torch.einsum("bhnd,hed->bhne", x, attn.weight[which]) + attn.bias[which])
        return torch.cat([z, -z], dim=-1).softmax(dim=-1)

    weights = phi(q, 0) @ phi(k, 1).transpose(-2, -1)
    return normalized(allowed_weights(weights, mask, causal), v)


def based_dense(attn, q, k, v, mask, causal):
    """Mean of the Taylor linear attention (``1 + s + s^2 / 2``, ``s = q'.k' / sqrt(d')``) and local softmax."""
    qp, kp = q @ attn.project.weight.T, k @ attn.project.weight.T
    s = (qp @ kp.transpose(-2, -1)) / math.sqrt(attn.feature_dim)
    taylor = normalized(allowed_weights(1 + s + s.square() / 2, mask, causal), v)
    window = attn.window_attention.window
    chunk = torch.arange(q.shape[2]) // window
    near = (chunk[:, None] - chunk[None, :]).abs() <= 1
    if causal:
        near = near & (chunk[:, None] >= chunk[None, :])
    allowed = dense_allowed(mask, q.shape[2], causal=causal, device=q.device)
    allowed = near if allowed is None else allowed & near
    local = softmax_attention_probs(q, k, allowed) @ v
    return (taylor + local) / 2


def retention_dense(attn, q, k, v, mask, causal):
    """``(Q K^T / sqrt(d) * D) V`` with ``D_ij = gamma_h^(i - j)`` (``|i - j|`` bidirectionally), masked."""
    positions = torch.arange(q.shape[2], dtype=q.dtype)
    distance = positions[:, None] - positions[None, :]
    gammas = attn.gammas().to(q.dtype)[:, None, None]
    decay = gammas ** distance.abs()
    decay = decay * (distance >= 0) if causal else decay
    weights = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1]) * decay
    return allowed_weights(weights, mask, causal=False) @ v


REFERENCES = {
    "cosformer": (cosformer_dense, {"chunk_size": 16}),
    "hedgehog": (hedgehog_dense, {"chunk_size": 16}),
    "based": (based_dense, {"chunk_size": 16, "window": 16}),
    "retention": (retention_dense, {"chunk_size": 16}),
}


def perturbed(attn):
    """The variant with its learned parameters moved off their initial values, so they matter in the test."""
    with torch.no_grad():
        for p in attn.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return attn


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize(("causal", "passes"), DIRECTIONS_AND_PASSES)
@pytest.mark.parametrize("name", list(REFERENCES))
def test_matches_its_materialized_definition(name, causal, with_mask, passes, monkeypatch):
    feature_kernel_in_small_pieces(monkeypatch, chunk_elements=1000, passes=passes)
    reference, hparams = REFERENCES[name]
    attn = perturbed(build_variant(name, causal=causal, **hparams))
    q, k, v = qkv(2, SEQ, scale=1.5)
    mask = padding_mask(2, SEQ) if with_mask else None
    weights = torch.randn_like(q)
    ours = values_and_grads(lambda q, k, v: attn(q, k, v, mask), q, k, v, mask, weights)
    dense = values_and_grads(lambda q, k, v: reference(attn, q, k, v, mask, causal), q, k, v, mask, weights)
    assert_same(ours, dense, mask)


@pytest.mark.parametrize(("causal", "passes"), DIRECTIONS_AND_PASSES)
@pytest.mark.parametrize("name", ["based", "hedgehog"])  # the ones whose maps learn
def test_learned_maps_get_the_gradient_of_their_definition(name, causal, passes, monkeypatch):
    """The feature maps' own parameters (Based's projection, Hedgehog's MLP), pulled back chunk by chunk by
    autograd or by closed forms (Based), get the gradient of the materialized definition."""
    feature_kernel_in_small_pieces(monkeypatch, chunk_elements=1000, passes=passes)
    reference, hparams = REFERENCES[name]
    attn = perturbed(build_variant(name, causal=causal, **hparams))
    q, k, v = qkv(2, SEQ, scale=1.5)
    mask = padding_mask(2, SEQ)
    weights = torch.randn_like(q) * mask[:, None, :, None]
    grads = []
    for run in (lambda: attn(q, k, v, mask), lambda: reference(attn, q, k, v, mask, causal)):
        attn.zero_grad()
        (run() * weights).sum().backward()
        grads.append({n: p.grad.clone() for n, p in attn.named_parameters() if p.grad is not None})
    ours, dense = grads
    assert ours.keys() == dense.keys() and ours, f"parameters with gradients: {sorted(ours)} vs {sorted(dense)}"
    for n in dense:
        torch.testing.assert_close(ours[n], dense[n], atol=1e-5, rtol=1e-4, msg=lambda m, n=n: f"{n}: {m}")


@pytest.mark.parametrize("name", list(REFERENCES))
@pytest.mark.parametrize("passes", [1, 2])
def test_gradcheck_in_float64(name, passes, monkeypatch):
    feature_kernel_in_small_pieces(monkeypatch, chunk_elements=50, passes=passes)
    hparams = {key: 4 for key in REFERENCES[name][1]}  # chunks and windows of 4
    attn = perturbed(build_variant(name, causal=True, heads=1, dim_head=4, **hparams)).double()
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, 8:] = False
    inputs = [torch.randn(2, 1, 11, 4, dtype=torch.float64, requires_grad=True) for _ in range(3)]

    def run(q, k, v):
        return attn(q, k, v, mask) * mask[:, None, :, None]  # padded query rows are unspecified

    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-6)


def fla_naive(module: str, function: str):
    """A function of flash-linear-attention's pure-PyTorch ``naive`` references, loaded from its file.

    The ``fla`` package imports Triton kernels on import, which the CPU build cannot load; the naive
    references need only torch and einops, so we load the one file. Skips where fla-core is not installed.
    """
    spec = importlib.util.find_spec("fla")
    if spec is None or spec.origin is None:
        pytest.skip("flash-linear-attention (fla-core) is not installed: pip install -e '.[peers]'")
    path = Path(spec.origin).parent / "ops" / module / "naive.py"
    loaded = importlib.util.spec_from_file_location(f"fla_naive_{module}", path)
    naive = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(naive)
    return getattr(naive, function)


def test_retention_matches_flash_linear_attention_naive_retention():
    naive_retention = fla_naive("retention", "naive_retention")
    attn = build_variant("retention", causal=True, heads=4, chunk_size=16)
    q, k, v = (torch.randn(2, 4, SEQ, 16) for _ in range(3))
    weights = torch.randn_like(q)
    ours = values_and_grads(lambda q, k, v: attn(q, k, v), q, k, v, None, weights)
    theirs = values_and_grads(naive_retention, q, k, v, None, weights)
    assert_same(ours, theirs, None)


def test_based_linear_part_matches_flash_linear_attention_naive_parallel_based():
    """Our Taylor branch (window branch set aside) is fla's ``naive_parallel_based`` on the projected q, k."""
    naive_parallel_based = fla_naive("based", "naive_parallel_based")
    attn = perturbed(build_variant("based", causal=True, chunk_size=16))
    q, k, v = qkv(2, SEQ)
    qp, kp = attn.feature_inputs(q, k)
    ours = attn.linear_attend(q, k, v, None)
    theirs = naive_parallel_based(qp, kp, v)  # normalizes with + 1e-6 where we clamp: a relative 1e-6 apart
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_retention_states_carried_across_groups_of_chunks_match_its_definition(causal, monkeypatch):
    """With groups of two chunks the states are carried across three groups (five chunks of 16)."""
    import variants.retention

    monkeypatch.setattr(variants.retention, "CHUNK_ELEMENTS", 2 * 2 * 16 * 16 * 2)  # batch x heads x 16 x 16, twice
    attn = build_variant("retention", causal=causal, chunk_size=16)
    q, k, v = qkv(2, SEQ)
    weights = torch.randn_like(q)
    ours = values_and_grads(lambda q, k, v: attn(q, k, v), q, k, v, None, weights)
    dense = values_and_grads(lambda q, k, v: retention_dense(attn, q, k, v, None, causal), q, k, v, None, weights)
    assert_same(ours, dense, None)


def test_retention_training_keeps_only_its_inputs_for_the_backward_pass():
    """Recomputed in the backward pass: what autograd saves is q, k, v, not the per-chunk scores and states."""
    attn = build_variant("retention", causal=False, chunk_size=16)
    q, k, v = (t.requires_grad_() for t in qkv(2, 256))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        attn(q, k, v).sum().backward()
    assert sum(saved) <= 4 * q.numel(), f"saved {sum(saved)} elements for inputs of {q.numel()} each"


def test_based_triangle_and_square_features_give_the_same_taylor_kernel():
    """Decoding keeps the triangle's 153 features, training the square's 273: one kernel, 1 + s + s^2 / 2."""
    from variants.based import taylor_features, taylor_features_square

    x, y = torch.randn(2, 5, 16, dtype=torch.float64).unbind(0)
    s = x @ y.T / 4
    expected = 1 + s + s.square() / 2
    assert taylor_features(x).shape[-1] == 153 and taylor_features_square(x).shape[-1] == 273
    torch.testing.assert_close(taylor_features(x) @ taylor_features(y).T, expected)
    torch.testing.assert_close(taylor_features_square(x) @ taylor_features_square(y).T, expected)
    # Written into one buffer without autograd, concatenated with it: the same numbers.
    assert torch.equal(taylor_features_square(x), taylor_features_square(x.requires_grad_()).detach())


REFUSED = {  # the kernel's refusals: (what the message must say, the arguments that earn it)
    "closed-form pairs without signed features": (
        "signed=True",
        {"pair_scores": lambda xq, xk, start, end: xq @ xk.transpose(-2, -1)},
    ),
    "closed-form gradients without signed features": (
        "analytic gradients need signed=True",
        {"signed": False, "analytic": variants._linear.AnalyticGradients(queries=None, keys=None, pairs=None)},
    ),
    "closed-form gradients, causal, without closed-form pairs": (
        "analytic gradients need signed=True",
        {"signed": True, "analytic": variants._linear.AnalyticGradients(queries=None, keys=None, pairs=None)},
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_kernel_refuses_closed_forms_it_cannot_use(case):
    message, arguments = REFUSED[case]
    q, k, v = qkv(1, 8)
    features = lambda x, start, end: x.exp()  # noqa: E731
    with pytest.raises(ValueError, match=message):
        variants._linear.linear_attention(
            q, k, v, query_features=features, key_logits=features, num_features=q.shape[-1], causal=True, **arguments
        )


@pytest.mark.parametrize("per_group", [1, 2, 8])
def test_causal_stabilizer_leaves_earlier_queries_unharmed_by_a_large_later_key(per_group, monkeypatch):
    """Each chunk's keys are stabilized by the running maximum up to that chunk, in a group too: a key 100 nats
    above the others, first in its chunk, must not underflow the features of the queries before it."""
    monkeypatch.setattr(variants._linear, "chunks_per_group", lambda *shape: per_group)
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 70, 8) for _ in range(3))
    logits = torch.randn(1, 2, 70, 8)
    logits[:, :, 56] += 100.0  # first of the 8th chunk: inside a group with earlier chunks

    def rows(x, start, end):
        return x

    def key_rows(x, start, end):
        return logits[:, :, start:end].clone()  # the kernel exponentiates them in place

    out = variants._linear.linear_attention(
        q.exp(), k, v, query_features=rows, key_logits=key_rows, num_features=8, causal=True, chunk=8
    )
    weights = (q.double().exp() @ logits.double().exp().transpose(-2, -1)).tril()
    torch.testing.assert_close(
        out, ((weights @ v.double()) / weights.sum(-1, keepdim=True)).float(), atol=1e-5, rtol=1e-5
    )
