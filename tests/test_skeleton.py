"""The shared Transformer skeleton: positions, heads, padding and causality end to end."""

from __future__ import annotations

import pytest
import torch

import models


def make(**kwargs):
    base = dict(vocab_size=20, num_outputs=5, max_seq_len=64, attention={"name": "full"}, dim=32, layers=2, heads=4)
    return models.Transformer(**(base | kwargs)).eval()


def test_sinusoidal_table_matches_the_paper_formula():
    table = models.sinusoidal_table(50, 16)
    pos, i = 7, 3
    assert table[pos, 2 * i] == pytest.approx(torch.sin(torch.tensor(pos / 10000 ** (2 * i / 16))).item(), abs=1e-6)
    assert table[pos, 2 * i + 1] == pytest.approx(torch.cos(torch.tensor(pos / 10000 ** (2 * i / 16))).item(), abs=1e-6)


@pytest.mark.parametrize("positional", ["sinusoidal", "learned", "none"])
def test_positional_choices(positional):
    model = make(positional=positional)
    tokens = torch.randint(0, 20, (2, 30))
    assert model(tokens).shape == (2, 5)
    swapped = tokens.flip(1)
    order_matters = not torch.allclose(model(tokens), model(swapped), atol=1e-6)
    assert order_matters == (positional != "none"), "without positions, mean-pooled attention is order-invariant"


def test_learned_positions_are_parameters_sinusoidal_are_not():
    assert any("positions" in n for n, _ in make(positional="learned").named_parameters())
    assert not any("positions" in n for n, _ in make(positional="sinusoidal").named_parameters())


def test_classification_pooling_ignores_padding():
    model = make()
    tokens = torch.randint(0, 20, (2, 40))
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[0, 25:] = False
    other = tokens.clone()
    other[0, 25:] = (other[0, 25:] + 7) % 20
    torch.testing.assert_close(model(tokens, mask), model(other, mask), atol=1e-5, rtol=1e-5)


def test_token_head_is_causal_when_asked():
    model = make(head="token", causal=True, num_outputs=20)
    tokens = torch.randint(0, 20, (2, 40))
    other = tokens.clone()
    other[:, 30:] = (other[:, 30:] + 3) % 20
    out, out2 = model(tokens), model(other)
    assert out.shape == (2, 40, 20)
    torch.testing.assert_close(out[:, :30], out2[:, :30], atol=1e-5, rtol=1e-5)


def test_bad_config_values_fail_clearly():
    with pytest.raises(ValueError, match="positional='rotary' is unknown"):
        make(positional="rotary")
    with pytest.raises(ValueError, match="needs a 'name'"):
        make(attention={"window": 3})
    with pytest.raises(ValueError, match="exceeds the model's max_seq_len=64"):
        make()(torch.randint(0, 20, (1, 65)))
