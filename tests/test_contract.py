"""The contract every registered variant meets, parametrized over the whole registry.

A variant added later is checked here with no new test code.
"""

from __future__ import annotations

import pytest
import torch
from helpers import build_variant, qkv, values_and_grads

import models
import variants

ALL = variants.names()
CAUSAL = variants.causal_names()
MASKABLE = [n for n in ALL if variants.get(n).supports_mask]


@pytest.mark.parametrize("name", ALL)
def test_shape_and_dtype(name):
    attn = build_variant(name).eval()
    q, k, v = qkv(2, 96)
    out = attn(q, k, v)
    assert out.shape == q.shape
    assert out.dtype == q.dtype


@pytest.mark.parametrize("name", ALL)
def test_finite_at_seq_4096(name):
    attn = build_variant(name).eval()
    q, k, v = qkv(1, 4096)
    with torch.no_grad():
        out = attn(q, k, v)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL)
def test_finite_with_large_magnitude_inputs(name):
    attn = build_variant(name)
    q, k, v = qkv(2, 256, scale=100.0, requires_grad=True)
    out = attn(q, k, v)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()


@pytest.mark.parametrize("name", ALL)
def test_gradients_reach_inputs_and_every_parameter(name):
    attn = build_variant(name)
    q, k, v = qkv(2, 128, requires_grad=True)
    mask = torch.ones(2, 128, dtype=torch.bool)
    mask[0, 100:] = False
    out = attn(q, k, v, mask if name in MASKABLE else None)
    (out * torch.randn_like(out)).sum().backward()
    for label, t in (("q", q), ("k", k), ("v", v)):
        assert t.grad is not None and torch.isfinite(t.grad).all(), label
        assert t.grad.abs().sum() > 0, f"no gradient reached {label}"
    for pname, p in attn.named_parameters():
        assert p.grad is not None, f"parameter {pname} got no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", CAUSAL)
def test_causal_future_does_not_leak(name):
    attn = build_variant(name, causal=True).eval()
    seq, cut = 200, 123
    q, k, v = qkv(2, seq)
    q2, k2, v2 = (t.clone() for t in (q, k, v))
    for t in (q2, k2, v2):
        t[:, :, cut + 1 :] = torch.randn_like(t[:, :, cut + 1 :]) * 5
    out, out2 = attn(q, k, v), attn(q2, k2, v2)
    torch.testing.assert_close(out[:, :, : cut + 1], out2[:, :, : cut + 1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[:, :, cut + 1 :], out2[:, :, cut + 1 :]), "future changes should matter"


MASK_CASES = [(n, False) for n in MASKABLE] + [(n, True) for n in MASKABLE if n in CAUSAL]


PAD_SEQ = 211  # prime: not a multiple of any block, bucket, chunk, window or landmark count
PADDING_FILLS = {
    "zeros": lambda t, gen: torch.zeros_like(t),
    "std 50": lambda t, gen: torch.randn(t.shape, generator=gen) * 50,
    "other random": lambda t, gen: torch.randn(t.shape, generator=gen),
}


@pytest.mark.parametrize("fill", PADDING_FILLS)
@pytest.mark.parametrize(("name", "causal"), MASK_CASES)
def test_what_padding_holds_never_changes_real_outputs_or_their_gradients(name, causal, fill):
    """The same sentence gets the same representation however it was padded and whatever the padding held."""
    attn = build_variant(name, causal=causal).eval()
    q, k, v = qkv(3, PAD_SEQ)
    mask = torch.ones(3, PAD_SEQ, dtype=torch.bool)
    mask[0, 150:] = False  # the case: the last ~30% padded
    mask[1, 17:] = False  # mostly padding
    weights = torch.randn_like(q)
    before = values_and_grads(lambda q, k, v: attn(q, k, v, mask), q, k, v, mask, weights)
    pad = ~mask[:, None, :, None]  # (B, 1, N, 1)
    gen = torch.Generator().manual_seed(1)
    q2, k2, v2 = (torch.where(pad, PADDING_FILLS[fill](t, gen), t) for t in (q, k, v))
    after = values_and_grads(lambda q, k, v: attn(q, k, v, mask), q2, k2, v2, mask, weights)
    real = mask[:, None, :, None].expand_as(q)
    assert all(torch.isfinite(t).all() for t in (*before, *after))
    for label, mine, other in zip(["out", "grad q", "grad k", "grad v"], before, after, strict=True):
        where = f"{label} at real positions, padding {fill}"
        torch.testing.assert_close(mine[real], other[real], atol=1e-5, rtol=1e-5, msg=lambda m, w=where: f"{w}: {m}")


@pytest.mark.parametrize("name", ALL)
def test_batch_items_are_independent(name):
    attn = build_variant(name).eval()
    q, k, v = qkv(3, 80)
    together = attn(q, k, v)
    for i in range(3):
        alone = attn(q[i : i + 1], k[i : i + 1], v[i : i + 1])
        torch.testing.assert_close(together[i : i + 1], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_output(name):
    def run():
        torch.manual_seed(1234)
        attn = build_variant(name)
        return attn(*qkv(2, 64, seed=7))

    torch.testing.assert_close(run(), run(), atol=0, rtol=0)


@pytest.mark.parametrize("name", ALL)
def test_runs_under_bf16_autocast_on_cpu(name):
    attn = build_variant(name).eval()
    q, k, v = qkv(2, 128)
    reference = attn(q, k, v)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(q, k, v)
    assert out.shape == q.shape
    assert torch.isfinite(out).all()
    assert (out.float() - reference).abs().mean() < 0.05


@pytest.mark.parametrize("name", ALL)
def test_skeleton_trains_with_every_variant(name):
    torch.manual_seed(0)
    model = models.Transformer(
        vocab_size=16, num_outputs=4, max_seq_len=256, attention={"name": name}, dim=32, layers=2, heads=2
    )
    tokens = torch.randint(0, 16, (16, 48))
    labels = tokens[:, 5] % 4  # the answer sits at one position: attention must find it
    mask = torch.ones(16, 48, dtype=torch.bool)
    mask[::2, 40:] = False
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(tokens, mask if name in MASKABLE else None), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


DROPOUT = [n for n in ALL if variants.get(n).supports_dropout]
NO_DROPOUT = [n for n in ALL if not variants.get(n).supports_dropout]


@pytest.mark.parametrize("name", DROPOUT)
def test_attention_dropout_is_applied_in_training_and_off_in_eval(name):
    attn = build_variant(name, dropout=0.5)
    q, k, v = qkv(2, 96, requires_grad=True)
    first, second = attn(q, k, v), attn(q, k, v)
    assert not torch.allclose(first, second), "training mode: each call drops different weights"
    (first * torch.randn_like(first)).sum().backward()
    for label, t in (("q", q), ("k", k), ("v", v)):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0, label
    attn.eval()
    with torch.no_grad():
        once, again = attn(q, k, v), attn(q, k, v)
    torch.testing.assert_close(once, again, atol=0, rtol=0)
    assert not torch.allclose(once, first.detach()), "eval mode: no dropout"


@pytest.mark.parametrize("name", NO_DROPOUT)
def test_a_variant_that_cannot_apply_dropout_refuses_it_at_build_time(name):
    with pytest.raises(variants.UnsupportedError, match=rf"'{name}' cannot apply attention dropout.*can: .*full"):
        build_variant(name, dropout=0.1)
    with pytest.raises(variants.UnsupportedError, match="cannot apply attention dropout"):
        models.Transformer(vocab_size=8, num_outputs=2, max_seq_len=16, attention={"name": name}, attn_dropout=0.1)
    assert build_variant(name, dropout=0.0) is not None
