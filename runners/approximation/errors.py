"""Approximation error of a variant against exact softmax attention on the same ``q, k, v``.

All metrics are averaged over the real query rows (padded queries have no
specified output) of every batch element and head:

- ``output_rel_error``: ``||out - out*|| / ||out*||`` per row, then mean;
- ``matrix_rel_error``: ``||A - A*||_F / ||A*||_F`` over the real rows;
- ``kl``: mean over rows of ``KL(A_row || A*_row)``, only for variants whose rows are
  distributions (``normalized_rows``: non-negative, summing to 1). This direction is finite for sparse variants
  (exact softmax gives every allowed key some weight), and says how many nats the variant's
  row wastes on keys exact attention weights less; ``NaN`` otherwise (Linformer's rows mix
  projected keys with signed weights);
- ``topk_mass_kept``: of the mass exact attention puts on its ``top_k`` keys per row, the share
  the variant also puts there (``sum min(a, a*) / sum a*`` over those keys): 1 keeps it all.
"""

from __future__ import annotations

import math

import torch


def approximation_errors(
    matrix: torch.Tensor,
    exact: torch.Tensor,
    out: torch.Tensor,
    exact_out: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    distributions: bool,
    top_k: int = 8,
) -> dict[str, float]:
    """Error metrics of ``matrix`` and ``out`` against ``exact`` and ``exact_out``.

    ``distributions``: the variant's rows are probability distributions (its ``normalized_rows``), so KL applies.
    Shapes: matrices ``(B, H, N, N)``, outputs ``(B, H, N, Dh)``, mask ``(B, N)`` (True = real token).
    """
    batch, heads, seq, _ = matrix.shape
    matrix, exact, out, exact_out = (t.double() for t in (matrix, exact, out, exact_out))
    real = torch.ones(batch, seq, dtype=torch.bool, device=matrix.device) if mask is None else mask
    real_rows = real[:, None, :].expand(batch, heads, seq)  # (B, H, N)
    row_error = (out - exact_out).norm(dim=-1) / exact_out.norm(dim=-1).clamp_min(1e-30)
    diff = (matrix - exact)[real_rows]
    errors = {
        "output_rel_error": float(row_error[real_rows].mean()),
        "matrix_rel_error": float(diff.norm() / exact[real_rows].norm().clamp_min(1e-30)),
        "kl": math.nan,
        "topk_mass_kept": float(topk_mass_kept(matrix, exact, top_k)[real_rows].mean()),
    }
    if distributions:
        errors["kl"] = float(row_kl(matrix, exact)[real_rows].mean())
    return errors


def row_kl(matrix: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """``KL(matrix_row || exact_row)`` per row, ``(B, H, N)``; terms with zero variant weight are 0."""
    p = matrix.clamp_min(0)
    ratio = p / exact.clamp_min(1e-300)
    return torch.where(p > 0, p * ratio.clamp_min(1e-300).log(), torch.zeros_like(p)).sum(-1)


def topk_mass_kept(matrix: torch.Tensor, exact: torch.Tensor, top_k: int) -> torch.Tensor:
    """Per row ``(B, H, N)``: ``sum min(a, a*) / sum a*`` over the ``top_k`` keys of exact attention."""
    top_mass, top_keys = exact.topk(min(top_k, exact.shape[-1]), dim=-1)
    kept = torch.minimum(matrix.gather(-1, top_keys), top_mass).sum(-1)
    return kept / top_mass.sum(-1).clamp_min(1e-300)
