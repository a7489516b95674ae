"""The Long Range Arena variants against their references: values and gradients, padded, causal where they can."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_same, build_variant, padding_mask, qkv, values_and_grads

import variants
import variants._linear
import variants._lsh
from variants.linear import elu_features


def linear_dense(q, k, v, mask, causal):
    """``phi(Q) phi(K)^T`` materialized, masked, normalized by rows: the Linear Transformer's definition."""
    weights = elu_features(q) @ elu_features(k).transpose(-2, -1)  # (B, H, N, N)
    if mask is not None:
        weights = weights * mask[:, None, None, :]
    if causal:
        weights = weights.tril()
    return (weights @ v) / weights.sum(dim=-1, keepdim=True)


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_linear_matches_its_materialized_definition(causal, with_mask, monkeypatch):
    monkeypatch.setattr(variants._linear, "CHUNK_ELEMENTS", 1000)  # several chunks in the bidirectional passes
    attn = build_variant("linear", causal=causal, chunk_size=16)
    seq = 75  # chunks of 16 with a ragged end
    q, k, v = qkv(2, seq, scale=2.0)
    mask = padding_mask(2, seq) if with_mask else None
    weights = torch.randn_like(q)
    ours = values_and_grads(lambda q, k, v: attn(q, k, v, mask), q, k, v, mask, weights)
    dense = values_and_grads(lambda q, k, v: linear_dense(q, k, v, mask, causal), q, k, v, mask, weights)
    assert_same(ours, dense, mask)


@pytest.mark.parametrize("causal", [False, True])
def test_linear_gradcheck_in_float64(causal, monkeypatch):
    monkeypatch.setattr(variants._linear, "CHUNK_ELEMENTS", 50)
    attn = build_variant("linear", causal=causal, chunk_size=4, heads=1, dim_head=4).double()
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, 8:] = False
    inputs = [torch.randn(2, 1, 11, 4, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    assert torch.autograd.gradcheck(lambda q, k, v: attn(q, k, v, mask), inputs, eps=1e-6, atol=1e-6)


def nystrom_peer_core(attn, q, k, v, mask):
    """The ``nystrom-attention`` package's module on our q, k, v: its projections set to pass them through.

    One sequence and one head at a time, since the package initialises its pseudo-inverse from the maximum
    over the whole batch (ours: per sequence and head); and with an all-true mask when there is none, since
    without a mask the package lets its own front padding take part as keys.
    """
    from nystrom_attention import NystromAttention as PeerNystrom

    batch, heads, seq, dim = q.shape

    def peer_for(head: int) -> PeerNystrom:  # one module per head: its residual filter is that head's
        peer = PeerNystrom(
            dim=3 * dim,
            dim_head=dim,
            heads=1,
            num_landmarks=attn.num_landmarks,
            pinv_iterations=attn.pinv_iterations,
            residual=attn.residual is not None,
            residual_conv_kernel=attn.residual_kernel,
        ).to(q.dtype)
        with torch.no_grad():
            peer.to_qkv.weight.copy_(torch.eye(3 * dim))
            peer.to_out[0].weight.copy_(torch.eye(3 * dim, dim))
            peer.to_out[0].bias.zero_()
            if attn.residual is not None:
                peer.res_conv.weight.copy_(attn.residual[head : head + 1])
        return peer

    peers = [peer_for(h) for h in range(heads)]
    mask = torch.ones(batch, seq, dtype=torch.bool) if mask is None else mask
    rows = []
    for b in range(batch):
        heads_out = []
        for h in range(heads):
            x = torch.cat([q[b, h], k[b, h], v[b, h]], dim=-1)[None]  # (1, n, 3 Dh)
            heads_out.append(peers[h](x, mask=mask[b : b + 1])[0, :, :dim])
        rows.append(torch.stack(heads_out))
    return torch.stack(rows)


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("seq", [64, 75])  # a multiple of the landmarks, and one that needs padding
def test_nystrom_matches_the_nystrom_attention_package(seq, with_mask, residual):
    attn = build_variant("nystrom", num_landmarks=8, residual=residual, residual_kernel=5)
    q, k, v = qkv(2, seq)
    mask = padding_mask(2, seq) if with_mask else None
    weights = torch.randn_like(q)
    ours = values_and_grads(lambda q, k, v: attn(q, k, v, mask), q, k, v, mask, weights)
    peer = values_and_grads(lambda q, k, v: nystrom_peer_core(attn, q, k, v, mask), q, k, v, mask, weights)
    assert_same(ours, peer, mask)


def test_nystrom_with_as_many_landmarks_as_tokens_is_exact_softmax():
    """With one token per landmark the Nyström factorisation is exact (the pseudo-inverse converges)."""
    attn = build_variant("nystrom", num_landmarks=16, residual=False, pinv_iterations=30)
    q, k, v = qkv(1, 16, scale=0.5)
    exact = build_variant("full_math")(q, k, v)
    torch.testing.assert_close(attn(q, k, v), exact, atol=1e-4, rtol=1e-4)


def test_nystrom_refuses_causal_and_names_who_can():
    with pytest.raises(variants.UnsupportedError, match="performer"):
        build_variant("nystrom", causal=True)


def synthesizer_reference(attn, q, k, v, mask):
    """The paper's definition written out with einsum: synthesized logits, masked softmax, weighted values."""
    seq = q.shape[2]
    if attn.mode == "dense":
        tokens = torch.cat([q, k], dim=-1)
        hidden = torch.einsum("bhid,hdu->bhiu", tokens, attn.w1) + attn.b1[None]
        logits = torch.einsum("bhiu,huj->bhij", hidden.clamp_min(0), attn.w2[..., :seq]) + attn.b2[None, ..., :seq]
    else:
        logits = attn.logits[None, :, :seq, :seq].expand(q.shape[0], -1, -1, -1)
    allowed = torch.ones(seq, seq, dtype=torch.bool)
    if attn.causal:
        allowed = allowed.tril()
    allowed = allowed[None, None] & (True if mask is None else mask[:, None, None, :])
    return torch.einsum("bhij,bhjd->bhid", logits.masked_fill(~allowed, float("-inf")).softmax(-1), v)


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mode", ["dense", "random"])
def test_synthesizer_matches_its_definition(mode, causal, with_mask):
    attn = build_variant("synthesizer", mode=mode, causal=causal, max_seq_len=64, hidden=8)
    q, k, v = qkv(2, 50)  # shorter than max_seq_len: the first 50 positions
    mask = padding_mask(2, 50) if with_mask else None
    weights = torch.randn_like(q)
    ours = values_and_grads(lambda q, k, v: attn(q, k, v, mask), q, k, v, mask, weights)
    reference = values_and_grads(lambda q, k, v: synthesizer_reference(attn, q, k, v, mask), q, k, v, mask, weights)
    assert_same(ours, reference, mask)


def test_synthesizer_refuses_lengths_beyond_max_seq_len_and_names_variants_without_one():
    attn = build_variant("synthesizer", max_seq_len=32)
    q, k, v = qkv(1, 40)
    with pytest.raises(variants.UnsupportedError, match=r"without a fixed length: .*local"):
        attn(q, k, v)
    with pytest.raises(variants.HyperparameterError, match="dense, random"):
        build_variant("synthesizer", mode="learned")


def reformer_dense(attn, q, k, v, mask):
    """LSH attention written densely: per round an (n, n) count of the links its sorted chunks make, then softmax.

    Uses the variant's own bucket assignment (``rotations`` and ``hash_order``), so it checks everything after it:
    the chunking, the look-back (wrapping into the previous round), self and padding masks, and the combination.
    """
    batch, heads, seq, dim = q.shape
    b = attn.bucket_size
    padded = seq + (-seq % (2 * b))
    pad = (0, 0, 0, padded - seq)
    qf, kf, vf = (torch.nn.functional.pad(t, pad).flatten(0, 1) for t in (q, k, v))
    valid = torch.ones(batch, seq, dtype=torch.bool) if mask is None else mask
    valid = torch.nn.functional.pad(valid, (0, padded - seq), value=False).repeat_interleave(heads, 0)
    rotations = attn.rotations(padded // b, q.device)
    order_q, order_k = attn.hash_order(qf, rotations, valid), attn.hash_order(kf, rotations, valid)
    logits = qf @ torch.nn.functional.normalize(kf, dim=-1).transpose(-1, -2) * dim**-0.5  # (BH, P, P)
    logits = logits.masked_fill(torch.eye(padded, dtype=torch.bool), -5e4)
    logits = logits.masked_fill(~valid[:, None, :], torch.finfo(logits.dtype).min)  # finite, as padding is
    outs, lses = [], []
    rows = torch.arange(qf.shape[0])[:, None, None]
    for r in range(attn.n_hashes):
        counts = torch.zeros(qf.shape[0], padded, padded)
        for c in range(padded // b):
            queries = order_q[:, r, c * b : (c + 1) * b]
            back = order_k[:, r - 1, -b:] if c == 0 else order_k[:, r, (c - 1) * b : c * b]
            keys = torch.cat([order_k[:, r, c * b : (c + 1) * b], back], dim=1)
            counts.index_put_((rows, queries[:, :, None], keys[:, None, :]), torch.ones(1), accumulate=True)
        scores = (logits + counts.log()).masked_fill(counts == 0, float("-inf"))
        lses.append(scores.logsumexp(-1, keepdim=True))
        outs.append(scores.softmax(-1) @ vf)
    weights = torch.stack(lses).softmax(0)
    return (torch.stack(outs) * weights).sum(0).view(batch, heads, padded, dim)[:, :, :seq]


@pytest.mark.parametrize("chunk_elements", [1, variants._lsh.CHUNK_ELEMENTS])  # one sorted chunk per piece, or all
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("seq", [64, 75])  # whole chunks, and a ragged length padded inside
def test_reformer_matches_its_dense_definition_with_the_same_buckets(seq, with_mask, chunk_elements, monkeypatch):
    monkeypatch.setattr(variants._lsh, "CHUNK_ELEMENTS", chunk_elements)
    attn = build_variant("reformer", bucket_size=8, n_hashes=3)
    q, k, v = qkv(2, seq)
    mask = padding_mask(2, seq) if with_mask else None
    weights = torch.randn_like(q)
    ours = values_and_grads(lambda q, k, v: attn(q, k, v, mask), q, k, v, mask, weights)
    dense = values_and_grads(lambda q, k, v: reformer_dense(attn, q, k, v, mask), q, k, v, mask, weights)
    assert_same(ours, dense, mask)


def test_reformer_with_shared_qk_matches_reformer_pytorch(monkeypatch):
    """With ``k = q`` and the peer's random rotations replaced by ours, the peer's LSHAttention gives our numbers.

    Without padding only: the peer hashes padded positions like real ones, where ours sorts them behind
    every real position so that they never displace a real key (the variant's docstring).
    """
    reformer_pytorch = pytest.importorskip("reformer_pytorch.reformer_pytorch")
    attn = build_variant("reformer", bucket_size=8, n_hashes=3)
    seq = 64
    q, _, v = qkv(2, seq)
    rotations = attn.rotations(seq // 8, q.device)
    real_randn = torch.randn

    def randn(shape, *args, **kwargs):  # the peer draws (1, Dh, n_hashes, n_buckets / 2) rotations each call
        if tuple(shape) == (1, *rotations.shape):
            return rotations[None].to(kwargs.get("dtype") or torch.float32)
        return real_randn(shape, *args, **kwargs)

    monkeypatch.setattr(reformer_pytorch.torch, "randn", randn)
    peer = reformer_pytorch.LSHAttention(bucket_size=8, n_hashes=3).eval()

    def peer_fn(q, k, v):
        return peer(q.flatten(0, 1), v.flatten(0, 1))[0].view_as(q)

    weights = torch.randn_like(q)
    ours = values_and_grads(lambda q, k, v: attn(q, q, v), q, q, v, None, weights)
    theirs = values_and_grads(peer_fn, q, q, v, None, weights)
    assert_same(ours, theirs, None)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_reformer_gradcheck_in_float64(dropout, monkeypatch):
    """The custom backward (recomputed scores, rounds joined in one softmax) is the derivative of its forward."""
    monkeypatch.setattr(variants._lsh, "CHUNK_ELEMENTS", 1)  # several pieces per round
    attn = build_variant("reformer", bucket_size=2, n_hashes=3, dropout=dropout, heads=1, dim_head=4).double()
    seq = 13  # padded inside to 16
    mask = torch.ones(2, seq, dtype=torch.bool)
    mask[1, 9:] = False
    q, k, v = (torch.randn(2, 1, seq, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))

    def run(q, k, v):
        torch.manual_seed(0)  # the same dropout mask on every evaluation
        return attn(q, k, v, mask) * mask[:, None, :, None]  # padded query rows are unspecified

    assert torch.autograd.gradcheck(run, (q, k, v), eps=1e-6, atol=1e-6)


def test_reformer_buckets_are_the_argmax_over_both_signs_ties_included():
    """``_bucket`` (two reductions) gives the reference's ``argmax([xR; -xR])``, whose first maximum wins a tie."""
    from variants.reformer import _bucket

    rotated = torch.randn(3, 50, 8)
    rotated[0, 0] = 0.0  # every entry tied: bucket 0
    rotated[0, 1, 2], rotated[0, 1, 5] = -9.0, 9.0  # +9 at 5 against -9 at 2: the first half wins
    rotated[0, 2, 1], rotated[0, 2, 6] = 9.0, 9.0  # two equal maxima: the first
    expected = torch.cat([rotated, -rotated], dim=-1).argmax(dim=-1)
    assert torch.equal(_bucket(rotated), expected)
    assert expected[0, :3].tolist() == [0, 5, 1]


def test_reformer_refuses_causal_and_names_who_can():
    with pytest.raises(variants.UnsupportedError, match="local"):
        build_variant("reformer", causal=True)


def sinkhorn_loops(attn, q, k, v, mask):
    """Sparse Sinkhorn attention block by block in plain loops, with the variant's own sorting matrix."""
    batch, heads, seq, dim = q.shape
    b = attn.block
    nb = -(-seq // b)
    padded = nb * b
    valid = torch.ones(batch, seq, dtype=torch.bool) if mask is None else mask
    valid = torch.nn.functional.pad(valid, (0, padded - seq), value=False)
    q, k, v = (torch.nn.functional.pad(t, (0, 0, 0, padded - seq)) * valid[:, None, :, None] for t in (q, k, v))
    blocks = [t.view(batch, heads, nb, b, dim) for t in (q, k, v)]
    sort = attn.sorting_matrix(blocks[0], blocks[1], valid.view(batch, 1, nb, b))
    out = torch.zeros_like(q)
    for i in range(nb):
        rows = slice(i * b, (i + 1) * b)
        mass = sum(sort[:, :, i, j, None] * valid[:, None, j * b : (j + 1) * b] for j in range(nb))  # (B, H, b)
        per_real = 1 / mass.clamp_min(1e-30)[..., None]
        partner_k = sum(sort[:, :, i, j, None, None] * blocks[1][:, :, j] for j in range(nb)) * per_real
        partner_v = sum(sort[:, :, i, j, None, None] * blocks[2][:, :, j] for j in range(nb)) * per_real
        partner_ok = mass > 0
        keys = torch.cat([k[:, :, rows], partner_k], dim=2)
        values = torch.cat([v[:, :, rows], partner_v], dim=2)
        ok = torch.cat([valid[:, None, rows].expand(-1, heads, -1), partner_ok], dim=-1)
        scores = (q[:, :, rows] @ keys.transpose(-1, -2)) * dim**-0.5
        scores = scores.masked_fill(~ok[:, :, None, :], torch.finfo(scores.dtype).min)
        out[:, :, rows] = scores.softmax(-1) @ values
    return out[:, :, :seq]


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("seq", [64, 75])
def test_sinkhorn_matches_its_blockwise_definition(seq, with_mask):
    attn = build_variant("sinkhorn", block=16)
    q, k, v = qkv(2, seq)
    mask = padding_mask(2, seq) if with_mask else None
    weights = torch.randn_like(q)
    ours = values_and_grads(lambda q, k, v: attn(q, k, v, mask), q, k, v, mask, weights)
    loops = values_and_grads(lambda q, k, v: sinkhorn_loops(attn, q, k, v, mask), q, k, v, mask, weights)
    assert_same(ours, loops, mask)


def test_sinkhorn_sorting_matrix_is_doubly_stochastic_over_real_blocks():
    attn = build_variant("sinkhorn", block=8, sinkhorn_iters=50)
    q, k, _ = qkv(2, 64)
    block_ok = torch.ones(2, 1, 8, 8, dtype=torch.bool)
    block_ok[1, :, 6:] = False  # the last two blocks of sequence 1 are padding
    q, k = (t.view(2, 2, 8, 8, -1) * block_ok[..., None] for t in (q, k))
    sort = attn.sorting_matrix(q, k, block_ok)
    torch.testing.assert_close(sort[0].sum(-1), torch.ones(2, 8))
    torch.testing.assert_close(sort[0].sum(-2), torch.ones(2, 8), atol=1e-3, rtol=0)
    torch.testing.assert_close(sort[1, :, :6].sum(-1), torch.ones(2, 6))
    torch.testing.assert_close(sort[1, :, :6, :6].sum(-2), torch.ones(2, 6), atol=1e-3, rtol=0)
    assert sort[1, :, :, 6:].abs().max() == 0 and sort[1, :, 6:].abs().max() == 0
