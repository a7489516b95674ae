"""The decoding contract, over every variant that declares it: token by token equals the causal parallel output."""

from __future__ import annotations

import pytest
import torch
from helpers import build_variant, qkv

import models
import variants
from variants._decoding import state_bytes

DECODING = variants.decoding_names()
SEQ = 301  # not a multiple of any chunk, block or window a variant uses by default (128, 64, 16, ...)
# Small windows and chunks, so that 301 tokens cross many of them (the decoding state's rules are exercised).
SMALL = {"local": {"window": 16}, "based": {"window": 16}, "retention": {"chunk_size": 32}}


def build_causal(name: str) -> variants.Attention:
    hparams = {k: v for k, v in SMALL.get(name, {}).items() if k in variants.hyperparameters(name)}
    return build_variant(name, causal=True, **hparams).eval()


def test_the_decoding_variants_include_the_ones_the_contract_names():
    assert {"full", "full_math", "local", "linear", "performer"} <= set(DECODING)


@pytest.mark.parametrize("name", DECODING)
def test_stepwise_equals_causal_parallel(name):
    attn = build_causal(name)
    q, k, v = qkv(2, SEQ, seed=1)
    with torch.no_grad():
        parallel = attn(q, k, v)
        state = attn.init_state(2, device=q.device, dtype=q.dtype)
        outs = []
        for t in range(SEQ):
            out, state = attn.step(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1], state)
            outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=2), parallel, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", DECODING)
def test_prefill_then_steps_equals_causal_parallel(name):
    """The prompt's parallel form hands over the same state as stepping through it."""
    attn = build_causal(name)
    q, k, v = qkv(2, SEQ, seed=2)
    prompt = 200
    with torch.no_grad():
        parallel = attn(q, k, v)
        first, state = attn.prefill(q[:, :, :prompt], k[:, :, :prompt], v[:, :, :prompt])
        outs = [first]
        for t in range(prompt, SEQ):
            out, state = attn.step(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1], state)
            outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=2), parallel, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", DECODING)
def test_state_is_bounded_or_grows_as_declared(name):
    """A KV cache grows by one token per step; any other state stops growing (a window) or never grows."""
    attn = build_causal(name)
    q, k, v = qkv(1, 464, seed=3)

    def sizes(lengths: range) -> list[int]:
        with torch.no_grad():
            return [state_bytes(attn.prefill(q[:, :, :n], k[:, :, :n], v[:, :, :n])[1]) for n in lengths]

    short, long = sizes(range(200, 232)), sizes(range(432, 464))  # a whole window cycle of 16 or 32 tokens each
    if name in ("full", "full_math"):
        per_token = 2 * q[0, :, 0].numel() * q.element_size()  # a key and a value per head
        assert [b - a for a, b in zip(short, long, strict=True)] == [232 * per_token] * len(short)
    else:
        assert max(long) <= max(short)


def test_a_variant_that_cannot_decode_says_who_can():
    attn = build_variant("nystrom")
    with pytest.raises(variants.UnsupportedError, match=r"cannot decode token by token; variants that can: .*full"):
        attn.init_state(1)


def test_decoding_needs_a_causal_build():
    attn = build_variant("full")
    with pytest.raises(variants.UnsupportedError, match="build it with causal=True"):
        attn.init_state(1)


def test_step_takes_one_token():
    attn = build_variant("full", causal=True)
    q, k, v = qkv(1, 3)
    with pytest.raises(ValueError, match=r"one token"):
        attn.step(q, k, v, attn.init_state(1))


def decoding_model(name: str) -> models.Transformer:
    torch.manual_seed(0)
    attention = {"name": name} | {k: v for k, v in SMALL.get(name, {}).items() if k in variants.hyperparameters(name)}
    model = models.Transformer(
        vocab_size=32,
        num_outputs=32,
        max_seq_len=128,
        attention=attention,
        dim=32,
        layers=2,
        heads=2,
        head="token",
        causal=True,
    )
    return model.eval()


@pytest.mark.parametrize("name", DECODING)
def test_skeleton_steps_give_the_logits_of_its_forward_pass(name):
    """Prefill a prompt, then feed the rest token by token through every layer: the causal forward's logits."""
    model = decoding_model(name)
    tokens = torch.randint(0, 32, (2, 53), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        parallel = model(tokens)
        logits, state = model.prefill(tokens[:, :20])
        stepped = [logits]
        for t in range(20, tokens.shape[1]):
            logits, state = model.step(tokens[:, t], state)
            stepped.append(logits[:, None])
    assert state.position == tokens.shape[1] and len(state.layers) == 2 and state.nbytes() > 0
    torch.testing.assert_close(torch.cat(stepped, dim=1), parallel, atol=1e-4, rtol=1e-4)


def test_generate_continues_greedily():
    model = decoding_model("linear")
    prompt = torch.randint(0, 32, (2, 7), generator=torch.Generator().manual_seed(1))
    out = model.generate(prompt, new_tokens=5)
    assert out.shape == (2, 12) and torch.equal(out[:, :7], prompt)
    with torch.no_grad():  # each generated token is the argmax of the forward pass over what came before
        assert torch.equal(model(out[:, :-1])[:, 6:].argmax(dim=-1), out[:, 7:])


def test_generation_needs_a_causal_token_model():
    model = models.Transformer(vocab_size=8, num_outputs=2, max_seq_len=16, attention={"name": "full"}, causal=True)
    with pytest.raises(ValueError, match="head='token'"):
        model.prefill(torch.zeros(1, 4, dtype=torch.long))
