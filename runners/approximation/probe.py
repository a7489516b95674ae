"""The maps probe: one variant at one length against exact softmax attention, on every input case.

Cases: random inputs and a trained model's inputs (bidirectional), random inputs
causally, random inputs with padding, and random cross-attention inputs (n/4
queries over n keys, the rectangular matrix of a decoder over its source). A
case the variant cannot do is a row with status ``unsupported``. Everything here
is a property of the config and seeds (no timing), so the numbers are the same on
any machine at any load.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

import variants
from runners.approximation.errors import approximation_errors
from runners.approximation.inputs import Inputs, random_inputs, trained_inputs
from runners.approximation.matrix import effective_matrix, exact_matrix, linearity_residual

CASES = ("random", "trained", "random causal", "random padded", "random cross")
CROSS_QUERIES = 4  # the cross case: seq_len // 4 queries over seq_len keys
LINEARITY_TOLERANCE = 1e-4  # out = A v must hold to this (relative); larger means the variant is not linear in v


def case_inputs(case: str, *, model: dict[str, Any], seq_len: int, settings: dict[str, Any]) -> Inputs:
    """The q, k, v (and mask) of one case at one length."""
    if case == "trained":
        return trained_inputs(model=model, seq_len=seq_len, batch=settings["batch"], trained=settings["trained"])
    heads, dim_head = head_shape(model)
    inputs = random_inputs(
        batch=settings["batch"],
        heads=heads,
        seq_len=seq_len,
        dim_head=dim_head,
        logit_scale=settings["logit_scale"],
        seed=settings["seed"],
        pad_fraction=settings["pad_fraction"] if case == "random padded" else 0.0,
    )
    if case == "random cross":  # independent Gaussian queries: the first n/4 rows are as random as all n
        return inputs._replace(q=inputs.q[:, :, : max(1, seq_len // CROSS_QUERIES)])
    return inputs


def head_shape(model: dict[str, Any]) -> tuple[int, int]:
    """``(heads, dim_head)`` of the skeleton config, as the Transformer derives them."""
    return model["heads"], model.get("dim_head") or model["dim"] // model["heads"]


def build_core(
    attention: dict[str, Any], model: dict[str, Any], *, seq_len: int, causal: bool, seed: int, cross: bool = False
):
    """The variant as the skeleton builds it, seeded (Performer's features, Linformer's projections), in eval mode."""
    heads, dim_head = head_shape(model)
    hparams = {k: v for k, v in attention.items() if k != "name"}
    torch.manual_seed(seed)
    name = attention["name"]
    shape = {"heads": heads, "dim_head": dim_head, "max_seq_len": seq_len, "causal": causal}
    core = variants.build(name, **shape, **({"cross": True} if cross else {}), **hparams)
    return core.eval()


def compare(
    core: variants.Attention, inputs: Inputs, *, top_k: int
) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """Error metrics of ``core`` against exact attention on ``inputs``, the variant's matrix and the exact one."""
    q, k, v, mask = inputs
    matrix = effective_matrix(core, q, k, mask)
    with torch.no_grad():
        out = core(q, k, v, mask)
    residual = linearity_residual(matrix, out, v, mask)
    if residual > LINEARITY_TOLERANCE:
        raise RuntimeError(f"{core.name} is not linear in v (|out - A v| / |out| = {residual:.2e}); no matrix exists")
    exact = exact_matrix(q, k, mask, causal=core.causal)
    errors = approximation_errors(matrix, exact, out, exact @ v, mask, distributions=core.normalized_rows, top_k=top_k)
    return errors | {"linearity_residual": residual}, matrix, exact


def most_peaked_head(matrix: torch.Tensor) -> int:
    """The head of batch element 0 with the lowest mean row entropy: where trained attention is sharpest."""
    p = matrix[0].double().clamp_min(1e-30)
    entropy = -(p * p.log()).sum(-1).mean(-1)  # (H,)
    return int(entropy.argmin())


def pooled(matrix: torch.Tensor, pixels: int) -> list[list[float]]:
    """A 2-D map mean-pooled to at most ``pixels`` a side, rounded for storage."""
    factor = math.ceil(matrix.shape[-1] / pixels)
    if factor > 1:
        matrix = F.avg_pool2d(matrix[None, None].float(), factor, ceil_mode=True)[0, 0]
    return [[round(float(x), 6) for x in row] for row in matrix]


def maps_probe(*, attention: dict[str, Any], model: dict[str, Any], seq_len: int, settings: dict[str, Any]):
    """Errors per case, the budget curve and pooled heatmaps of one variant at one length."""
    cls = variants.get(attention["name"])
    rows, heatmaps = [], []
    for case in CASES:
        causal, cross = case == "random causal", case == "random cross"
        refused = (causal and not cls.supports_causal) or (cross and not cls.supports_cross)
        if refused or (case == "random padded" and not cls.supports_mask):
            rows.append({"case": case, "status": "unsupported"})
            continue
        inputs = case_inputs(case, model=model, seq_len=seq_len, settings=settings)
        core = build_core(attention, model, seq_len=seq_len, causal=causal, seed=settings["seed"], cross=cross)
        errors, matrix, exact = compare(core, inputs, top_k=settings["top_k"])
        rows.append({"case": case, "status": "ok"} | errors)
        head = most_peaked_head(exact) if case == "trained" else 0
        pixels = settings["heatmap_pixels"]
        maps = {"map": pooled(matrix[0, head], pixels), "exact_map": pooled(exact[0, head], pixels)}
        heatmaps.append({"case": case, "head": head} | maps)
    return {
        "errors": rows,
        "budget_curve": budget_curve(attention, model, seq_len=seq_len, settings=settings),
        "heatmaps": heatmaps,
        "maps_summary": {row["case"]: row.get("output_rel_error") for row in rows},
    }


def budget_curve(
    attention: dict[str, Any],
    model: dict[str, Any],
    *,
    seq_len: int,
    settings: dict[str, Any],
    cases: tuple[str, ...] = ("random", "trained"),
) -> list[dict[str, Any]]:
    """Errors as the variant's budget hyperparameter grows (mean over ``budget_seeds``), random and trained inputs.

    Values the variant refuses at this length (Linformer's ``k`` above n) are left out.
    """
    budget = variants.get(attention["name"]).budget
    if budget is None:
        return []
    parameter, values = budget
    curve = []
    for case in cases:
        inputs = case_inputs(case, model=model, seq_len=seq_len, settings=settings)
        for value in values:
            per_seed = []
            for seed in settings["budget_seeds"]:
                try:
                    core = build_core(attention | {parameter: value}, model, seq_len=seq_len, causal=False, seed=seed)
                except variants.HyperparameterError:
                    break
                per_seed.append(compare(core, inputs, top_k=settings["top_k"])[0])
            if per_seed:
                mean = {key: sum(e[key] for e in per_seed) / len(per_seed) for key in per_seed[0]}
                curve.append({"parameter": parameter, "value": value, "case": case, "seeds": len(per_seed)} | mean)
    return curve
