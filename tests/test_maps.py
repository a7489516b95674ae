"""Attention maps and approximation error: the effective matrix of every variant, read through the contract."""

from __future__ import annotations

import pytest
import torch
from helpers import DIM_HEAD, HEADS, TINY_MAPS, TINY_SWEEP, build_variant, qkv
from omegaconf import OmegaConf

import variants
from runners.approximation.errors import approximation_errors
from runners.approximation.inputs import random_inputs
from runners.approximation.matrix import effective_matrix, exact_matrix, linearity_residual
from runners.approximation.probe import CASES, budget_curve, maps_probe
from runners.maps import run_maps
from runners.sweeping.run import run_sweep

SEQ = 100  # not a multiple of any block, window or chunk
MASK_CAPABLE = [n for n in variants.names() if variants.get(n).supports_mask]


def matrix_of(name: str, *, causal: bool = False, mask: torch.Tensor | None = None, seq: int = SEQ, **hparams):
    core = build_variant(name, causal=causal, **hparams).eval()
    q, k, v = qkv(2, seq, seed=1)
    return core, effective_matrix(core, q, k, mask), (q, k, v)


def padding_mask(seq: int = SEQ, real: tuple[int, int] = (70, 100)) -> torch.Tensor:
    return torch.arange(seq)[None, :] < torch.tensor(real)[:, None]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_matrix_of_full_math_equals_its_attention_probs(causal, masked):
    mask = padding_mask() if masked else None
    core, matrix, (q, k, _) = matrix_of("full_math", causal=causal, mask=mask)
    torch.testing.assert_close(matrix, core.attention_probs(q, k, mask), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", variants.names())
def test_every_variant_is_linear_in_v_so_its_matrix_reproduces_its_output(name):
    mask = padding_mask() if name in MASK_CAPABLE else None
    core, matrix, (q, k, v) = matrix_of(name, mask=mask)
    with torch.no_grad():
        out = core(q, k, v, mask)
    assert linearity_residual(matrix, out, v, mask) < 1e-5


def test_local_matrix_is_zero_outside_its_band_and_not_inside():
    window = 16
    _, matrix, _ = matrix_of("local", window=window)
    chunk = torch.arange(SEQ) // window
    band = (chunk[:, None] - chunk[None, :]).abs() <= 1
    assert matrix[..., ~band].abs().max() == 0
    assert (matrix[..., band] > 0).all()


@pytest.mark.parametrize("name", variants.causal_names())
def test_causal_variants_give_a_lower_triangular_matrix(name):
    _, matrix, _ = matrix_of(name, causal=True)
    above = torch.ones(SEQ, SEQ, dtype=torch.bool).triu(1)
    assert matrix[..., above].abs().max() < 1e-6
    assert matrix[..., ~above].abs().max() > 0


@pytest.mark.parametrize("name", MASK_CAPABLE)
def test_padded_key_columns_are_zero(name):
    mask = padding_mask()
    _, matrix, _ = matrix_of(name, mask=mask)
    padded_columns = matrix[0, :, :70, 70:]  # element 0: real queries, padded keys
    assert padded_columns.abs().max() < 1e-6
    assert matrix[1, :, :, 70:].abs().max() > 0  # element 1 has no padding there


@pytest.mark.parametrize("name", variants.names())
def test_rows_are_distributions_exactly_when_the_variant_says_so(name):
    causal = variants.get(name).supports_causal
    _, matrix, _ = matrix_of(name, causal=causal)
    sums_to_one = bool(((matrix.sum(-1) - 1).abs() < 1e-5).all() and matrix.min() >= -1e-6)
    assert sums_to_one == variants.get(name).normalized_rows


def test_full_is_within_1e5_of_exact_and_exact_has_zero_error():
    q, k, v = qkv(2, SEQ, seed=2)
    exact = exact_matrix(q, k)
    for name, bound in (("full", 1e-5), ("full_math", 0.0)):
        core = build_variant(name).eval()
        with torch.no_grad():
            out = core(q, k, v)
        errors = approximation_errors(effective_matrix(core, q, k), exact, out, exact @ v, distributions=True)
        assert errors["output_rel_error"] <= bound and errors["matrix_rel_error"] <= bound, (name, errors)
        assert errors["topk_mass_kept"] == pytest.approx(1.0, abs=1e-5)


def test_error_metrics_on_a_known_matrix():
    exact = torch.tensor([[[[0.5, 0.5, 0.0], [0.25, 0.25, 0.5], [1 / 3, 1 / 3, 1 / 3]]]]).clamp_min(1e-12)
    variant = torch.tensor([[[[1.0, 0.0, 0.0], [0.25, 0.25, 0.5], [1 / 3, 1 / 3, 1 / 3]]]])
    v = torch.eye(3)[None, None]
    errors = approximation_errors(variant, exact, variant @ v, exact @ v, distributions=True, top_k=1)
    assert errors["kl"] == pytest.approx(torch.log(torch.tensor(2.0)).item() / 3, rel=1e-6)  # row 0: log(1/0.5)
    assert errors["topk_mass_kept"] == pytest.approx(1.0)  # row 0 keeps all of key 0's 0.5 (its top-1)
    two = approximation_errors(variant, exact, variant @ v, exact @ v, distributions=True, top_k=2)
    assert two["topk_mass_kept"] == pytest.approx((0.5 + 1 + 1) / 3)  # row 0 keeps 0.5 of its top-2 mass 1.0


def test_performer_error_falls_as_its_features_grow():
    model = {"dim": HEADS * DIM_HEAD, "heads": HEADS, "dim_head": DIM_HEAD}
    settings = {"batch": 2, "logit_scale": 1.0, "seed": 0, "top_k": 8, "budget_seeds": [0, 1, 2], "pad_fraction": 0}
    curve = budget_curve({"name": "performer"}, model, seq_len=64, settings=settings, cases=("random",))
    errors = {row["value"]: row["output_rel_error"] for row in curve}
    assert list(errors) == list(variants.get("performer").budget[1])
    assert errors[512] < errors[64] < errors[8]


def test_random_inputs_have_the_requested_logit_scale():
    q, k, _, mask = random_inputs(batch=4, heads=2, seq_len=256, dim_head=64, logit_scale=3.0, seed=0)
    logits = q @ k.transpose(-2, -1) / 8
    assert logits.std().item() == pytest.approx(3.0, rel=0.05)
    assert mask is None


def test_every_registered_variant_gets_errors_budget_and_maps_with_no_code_of_its_own(compose_config):
    cfg = compose_config("maps", *TINY_MAPS, "model=tiny")
    settings = OmegaConf.to_container(cfg.approximation) | {"heatmap_pixels": 16}
    model = OmegaConf.to_container(cfg.model)
    for name in variants.names():
        cls = variants.get(name)
        attention = {"name": name} | ({"k": 32} if name == "linformer" else {})  # its default k=256 > n
        result = maps_probe(attention=attention, model=model, seq_len=48, settings=settings)
        statuses = {row["case"]: row["status"] for row in result["errors"]}
        assert list(statuses) == list(CASES)
        assert statuses["random causal"] == ("ok" if cls.supports_causal else "unsupported")
        assert statuses["random cross"] == ("ok" if cls.supports_cross else "unsupported")
        assert len(result["heatmaps"]) == sum(s == "ok" for s in statuses.values())
        assert all(len(h["map"]) <= 16 for h in result["heatmaps"])
        assert bool(result["budget_curve"]) == (cls.budget is not None)


def test_maps_runner_writes_error_tables_budget_curve_and_heatmaps(tmp_path, compose_config):
    cfg = compose_config("maps", *TINY_MAPS, "model=tiny", "attention=performer", "seq_len=48", f"out_dir={tmp_path}")
    text = run_maps(cfg).read_text()
    assert "How close to exact attention" in text and "Error vs budget" in text
    for name in ("maps_run.png", "budget_run.png", "errors.csv", "budget.csv"):
        assert (tmp_path / name).stat().st_size > 0, name
    rows = (tmp_path / "errors.csv").read_text().splitlines()
    assert len(rows) == 1 + len(CASES)  # performer does every case


def test_a_sweep_with_maps_adds_the_section_to_its_report(tmp_path, compose_config):
    cfg = compose_config(
        "config",
        *TINY_SWEEP,
        *TINY_MAPS,
        "attention=local",
        "attention.window=16",
        "sweep.maps=true",
        "sweep.maps_lens=[48]",
        "sweep.seq_lens=[]",
    )
    table = run_sweep(cfg)
    maps = table[table.probe == "maps"]
    assert list(maps.status) == ["ok"]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## How close to exact attention" in text
    assert (tmp_path / "report" / "maps_all.png").exists() and (tmp_path / "report" / "budget_all.png").exists()
    assert "maps_all" in text


def test_maps_lengths_beyond_the_trained_model_are_refused_before_any_work(tmp_path, compose_config):
    cfg = compose_config(
        "config", *TINY_SWEEP, *TINY_MAPS, "attention=full", "sweep.maps=true", "sweep.maps_lens=[4096]"
    )
    with pytest.raises(ValueError, match=r"approximation\.trained\.max_seq_len"):
        run_sweep(cfg)


def test_the_cross_case_reads_the_rectangular_matrix_of_n_over_4_queries_over_n_keys(compose_config):
    cfg = compose_config("maps", *TINY_MAPS, "model=tiny")
    settings = OmegaConf.to_container(cfg.approximation) | {"heatmap_pixels": 64}
    model = OmegaConf.to_container(cfg.model)
    errors = {}
    for attention in ({"name": "full_math"}, {"name": "linformer", "k": 8}):
        result = maps_probe(attention=attention, model=model, seq_len=48, settings=settings)
        row = next(r for r in result["errors"] if r["case"] == "random cross")
        cross_map = next(h for h in result["heatmaps"] if h["case"] == "random cross")["map"]
        assert (len(cross_map), len(cross_map[0])) == (12, 48)  # queries down, keys across
        errors[attention["name"]] = row["output_rel_error"]
    assert errors["full_math"] < 1e-5 < 0.05 < errors["linformer"]  # exact is exact; 8 rows of 48 are not
