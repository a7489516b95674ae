"""The encoder-decoder mode of the skeleton: teacher forcing equals generation, cross state, choices, errors."""

from __future__ import annotations

import pytest
import torch

import models
import variants

VOCAB = 12


def build(attention="full", cross=None, **overrides):
    kwargs = dict(
        vocab_size=VOCAB,
        num_outputs=VOCAB,
        max_seq_len=48,
        attention={"name": attention},
        head="token",
        causal=True,
        encoder_layers=1,
        layers=2,
        dim=32,
        cross_attention=cross,
    )
    torch.manual_seed(0)
    return models.Transformer(**(kwargs | overrides)).eval()


def source_and_target(source_len=20, target_len=9):
    gen = torch.Generator().manual_seed(1)
    source = torch.randint(0, VOCAB, (2, source_len), generator=gen)
    mask = torch.ones(2, source_len, dtype=torch.bool)
    mask[1, source_len - 5 :] = False
    return source, mask, torch.randint(0, VOCAB, (2, target_len), generator=gen)


def stepwise_logits(model, source, mask, target, prompt=4):
    logits, state = model.prefill(target[:, :prompt], source, mask)
    outs = [logits]
    for t in range(prompt, target.shape[1]):
        step, state = model.step(target[:, t], state)
        outs.append(step[:, None])
    return torch.cat(outs, dim=1), state


PAIRS = [("full", None)] + [("full", {"name": n}) for n in variants.cross_names() if n != "full"]
PAIRS += [(n, None) for n in variants.decoding_names() if n != "full"]


@pytest.mark.parametrize(("attention", "cross"), PAIRS, ids=lambda x: x if isinstance(x, str) else str(x))
def test_generation_with_each_cross_variant_equals_teacher_forcing(attention, cross):
    hparams = {"k": 8} if cross and cross["name"] == "linformer" else {}
    model = build(attention, cross and cross | hparams)
    source, mask, target = source_and_target()
    with torch.no_grad():
        forced = model(target, None, source, mask)
        stepped, _ = stepwise_logits(model, source, mask, target)
    torch.testing.assert_close(stepped, forced, atol=1e-4, rtol=1e-4)


def test_the_cross_variant_defaults_to_the_same_where_it_can_cross_else_full():
    assert build("linear").cross_attention == {"name": "linear"}
    assert build("local").cross_attention == {"name": "full"}  # a window has no meaning across two sequences
    assert build("full", {"name": "performer", "nb_features": 16}).cross_attention["nb_features"] == 16
    with pytest.raises(variants.UnsupportedError, match=r"cannot attend across two sequences.*can: full, full_math"):
        build("full", {"name": "local"})


def test_cross_state_is_built_once_a_cache_grows_with_the_source_a_summary_does_not():
    sizes = {}
    for name in ("full", "linear", "linformer"):
        for length in (16, 32):
            model = build("full", {"name": name} | ({"k": 8} if name == "linformer" else {}))
            source, _, target = source_and_target(source_len=length)
            _, state = stepwise_logits(model, source, None, target)
            sizes[name, length] = state.cross_nbytes()
            assert len(state.cross) == 2  # one per decoder layer
    assert sizes["full", 32] == 2 * sizes["full", 16]  # keys and values of every source token
    assert sizes["linear", 32] == sizes["linear", 16]  # a (dim_head, dim_head) summary per head
    assert sizes["linformer", 32] == sizes["linformer", 16]  # k projected rows


def test_padded_source_tokens_do_not_change_the_target_logits():
    model = build("full", {"name": "linear"})
    source, mask, target = source_and_target()
    other = source.clone()
    other[1, ~mask[1]] = (other[1, ~mask[1]] + 3) % VOCAB
    with torch.no_grad():
        torch.testing.assert_close(model(target, None, other, mask), model(target, None, source, mask))


def test_wrong_use_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="causal=True, head='token'"):
        build(causal=False)
    with pytest.raises(ValueError, match="cross_attention needs an encoder"):
        build(cross={"name": "full"}, encoder_layers=0)
    model = build()
    with pytest.raises(ValueError, match="needs its source"):
        model(torch.zeros(1, 4, dtype=torch.long))
