"""The registry's public API: registration, discovery, and clear errors."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pytest
import torch

import variants


@pytest.fixture
def toy_variant():
    """A non-causal toy variant registered for one test: mean of values over real keys."""

    @variants.register("toy_mean")
    class ToyMean(variants.Attention):
        supports_causal = False

        def __init__(self, *, scale: float = 1.0, **common):
            super().__init__(**common)
            variants.check_range("scale", scale, low=0.0, low_inclusive=False)
            self.scale = scale

        def attend(self, q, k, v, mask):
            weights = torch.ones(v.shape[0], 1, v.shape[2], 1) if mask is None else mask[:, None, :, None].float()
            pooled = (v * weights).sum(2, keepdim=True) / weights.sum(2, keepdim=True)
            return self.scale * pooled.expand_as(v)

    yield ToyMean
    variants.unregister("toy_mean")


def test_builtin_exact_variants_are_registered():
    assert {"full", "full_math"} <= set(variants.names())


def test_toy_variant_registers_builds_and_runs(toy_variant):
    assert "toy_mean" in variants.names()
    assert variants.hyperparameters("toy_mean") == {"scale": 1.0}
    attn = variants.build("toy_mean", heads=2, dim_head=8, max_seq_len=None, scale=2.0)
    assert isinstance(attn, toy_variant) and attn.name == "toy_mean"
    q = torch.randn(1, 2, 5, 8)
    torch.testing.assert_close(attn(q, q, q), 2.0 * q.mean(2, keepdim=True).expand_as(q))


def test_unknown_name_lists_registered_variants():
    with pytest.raises(variants.UnknownVariantError, match=r"registered: .*full.*full_math"):
        variants.build("nope", heads=1, dim_head=8, max_seq_len=16)


def test_causal_request_on_incapable_variant_names_capable_ones(toy_variant):
    with pytest.raises(variants.UnsupportedError, match=r"cannot be causal; variants that can: .*full"):
        variants.build("toy_mean", heads=1, dim_head=8, max_seq_len=16, causal=True)


def test_out_of_range_hyperparameter_says_which_and_the_range(toy_variant):
    with pytest.raises(variants.HyperparameterError, match=r"scale=-1.0 is out of range; allowed: \(0.0, inf\]"):
        variants.build("toy_mean", heads=1, dim_head=8, max_seq_len=16, scale=-1.0)
    with pytest.raises(variants.HyperparameterError, match=r"dropout=1.5 is out of range; allowed: \[0.0, 1.0\)"):
        variants.build("full", heads=1, dim_head=8, max_seq_len=16, dropout=1.5)


def test_unknown_hyperparameter_lists_accepted_ones():
    with pytest.raises(variants.HyperparameterError, match=r"unknown hyperparameter\(s\) \['windw'\].*keep_probs"):
        variants.build("full_math", heads=1, dim_head=8, max_seq_len=16, windw=3)


def test_bad_shapes_and_masks_are_explained():
    attn = variants.build("full", heads=2, dim_head=8, max_seq_len=16)
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="heads=2, dim_head=8"):
        attn(torch.randn(1, 3, 4, 8), torch.randn(1, 3, 4, 8), torch.randn(1, 3, 4, 8))
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        attn(q, q, q, torch.ones(1, 4))


def test_duplicate_name_from_another_class_is_refused():
    with pytest.raises(ValueError, match="already registered"):

        @variants.register("full")
        class Impostor(variants.Attention):
            pass


def test_a_new_file_in_a_variants_folder_is_discovered_with_no_other_edit(tmp_path, monkeypatch):
    """Discovery imports every public module of a package: a temporary one here, never the source tree."""
    name = f"probe_{uuid.uuid4().hex[:8]}"
    package = tmp_path / f"pkg_{name}"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "_private.py").write_text("raise RuntimeError('modules starting with _ are not imported')\n")
    (package / f"{name}.py").write_text(
        textwrap.dedent(
            f"""
            import variants

            @variants.register("{name}")
            class Probe(variants.Attention):
                def attend(self, q, k, v, mask):
                    return v
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert variants.discover(package.name) == [name]
        assert name in variants.names() and "full_math" in variants.names()
        q = torch.randn(1, 2, 4, 8)
        assert torch.equal(variants.build(name, heads=2, dim_head=8, max_seq_len=None)(q, q, q), q)
    finally:
        variants.unregister(name)
    assert name not in variants.names()


def test_the_variants_package_discovers_its_own_folder():
    shipped = sorted(p.stem for p in Path(variants.__file__).parent.glob("[!_]*.py"))
    assert sorted(variants.discover("variants")) == shipped
    assert set(shipped) <= {variants.get(n).__module__.rsplit(".", 1)[-1] for n in variants.names()}
