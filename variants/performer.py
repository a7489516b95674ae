"""Performer: FAVOR+ attention (Choromanski et al. 2021, "Rethinking Attention with Performers").

Softmax attention ``exp(q.k / sqrt(d))`` is approximated by ``phi(q) . phi(k)``
with positive orthogonal random features
``phi(x) = exp(W x - |x|^2 / 2) / sqrt(m)`` (inputs pre-scaled by ``d^-1/4``),
so attention is ``phi(Q) (phi(K)^T V)`` normalized row-wise: O(n m d).

Numerical stabilization: each query's features are shifted by their own max
and all keys' features by one shared max over real keys. Both shifts cancel
exactly in the normalized ratio, so large logits give no inf/NaN and the
stabilizers carry no gradient. Causal attention runs chunk by chunk with a
running prefix state ``(m, d)`` rescaled online when the key max grows, so
memory is O(n m + (n / chunk) m d) instead of a naive cumulative sum's O(n m d).
"""

from __future__ import annotations

import math

import torch

import variants


def orthogonal_gaussian_features(nb_features: int, dim: int) -> torch.Tensor:
    """``(m, d)`` random features: orthogonal blocks with chi-distributed row norms."""
    blocks = []
    for start in range(0, nb_features, dim):
        q, _ = torch.linalg.qr(torch.randn(dim, dim))
        blocks.append(q.T[: min(dim, nb_features - start)])
    norms = torch.randn(nb_features, dim).norm(dim=1, keepdim=True)
    return norms * torch.cat(blocks)


def query_features(x_proj: torch.Tensor) -> torch.Tensor:
    """Positive query features; the per-query shift (and ``-|q|^2/2``) cancel in the ratio.

    In place on ``x_proj`` (a fresh matmul output): one ``(n, m)`` buffer, not three.
    """
    return x_proj.sub_(x_proj.amax(dim=-1, keepdim=True).detach()).exp_()


def key_logits(x_proj: torch.Tensor, keys: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """``W k - |k|^2 / 2`` per key and feature, ``-inf`` at padded keys."""
    sq_norm = keys.square().sum(dim=-1, keepdim=True) * (0.5 / math.sqrt(keys.shape[-1]))
    logits = x_proj.sub_(sq_norm)  # in place on a fresh matmul output
    if valid is not None:
        logits.masked_fill_(~valid[:, None, :, None], float("-inf"))
    return logits


def shared_max(logits: torch.Tensor, *, dims: tuple[int, ...]) -> torch.Tensor:
    """Max over ``dims``, finite even when every key is padded."""
    return logits.amax(dim=dims, keepdim=True).detach().clamp_min(torch.finfo(logits.dtype).min)


def normalize(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """Row-normalize; a row whose features all underflowed gives zeros, not NaN."""
    return numerator / denominator.clamp_min(1e-30)[..., None]


@variants.register("performer")
class PerformerAttention(variants.Attention):
    """FAVOR+ linear attention with ``nb_features`` positive orthogonal random features.

    No attention dropout: the weights ``phi(q) . phi(k)`` are never formed, so
    there is nothing to drop (the reference ``performer-pytorch`` has none
    either); ``build`` refuses ``dropout > 0``.
    """

    supports_causal = True
    supports_dropout = False

    def __init__(
        self,
        *,
        nb_features: int = 256,
        redraw_interval: int = 0,
        chunk_size: int = 128,
        **common,
    ) -> None:
        super().__init__(**common)
        variants.check_range("nb_features", nb_features, low=1)
        variants.check_range("redraw_interval", redraw_interval, low=0)
        variants.check_range("chunk_size", chunk_size, low=1)
        self.nb_features = nb_features
        self.redraw_interval = redraw_interval
        self.chunk_size = chunk_size
        self.register_buffer("features", torch.empty(nb_features, self.dim_head))
        self.redraw_features()

    @torch.no_grad()
    def redraw_features(self) -> None:
        """Draw a fresh projection from the global RNG, pre-scaled by ``d^-1/4``."""
        fresh = orthogonal_gaussian_features(self.nb_features, self.dim_head) * self.dim_head**-0.25
        self.features.copy_(fresh.to(self.features.device))

    def on_train_step(self, step: int) -> None:
        if self.redraw_interval and step > 0 and step % self.redraw_interval == 0:
            self.redraw_features()

    def attend(self, q, k, v, mask):
        with torch.autocast(device_type=q.device.type, enabled=False):
            # exp() of random projections needs float32 range and precision.
            out_dtype = q.dtype
            q, k, v = q.float(), k.float(), v.float()
            q_feat = query_features(q @ self.features.T)  # (B, H, N, m)
            k_logit = key_logits(k @ self.features.T, k, mask)  # (B, H, N, m)
            if self.causal:
                out = self._causal(q_feat, k_logit, v)
            else:
                k_feat = k_logit.sub_(shared_max(k_logit, dims=(-2, -1))).exp_()
                context = k_feat.transpose(-2, -1) @ v  # (B, H, m, Dh)
                out = normalize(q_feat @ context, (q_feat @ k_feat.sum(dim=-2)[..., None]).squeeze(-1))
        return out.to(out_dtype)

    def _causal(self, q_feat: torch.Tensor, k_logit: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Chunked prefix sums with an online-rescaled key stabilizer."""
        batch, heads, _, _ = v.shape
        m = q_feat.shape[-1]
        state = v.new_zeros(batch, heads, m, v.shape[-1])  # sum_j phi(k_j) v_j^T so far
        norm = v.new_zeros(batch, heads, m)  # sum_j phi(k_j) so far
        running = v.new_full((batch, heads, 1, 1), torch.finfo(v.dtype).min)
        outputs = []
        # split() rather than slicing in the loop: slicing's backward would allocate a full-length
        # gradient per chunk, making the backward pass quadratic in the sequence length.
        chunks = zip(*(t.split(self.chunk_size, dim=2) for t in (q_feat, k_logit, v)), strict=True)
        for qc, lc, vc in chunks:
            new_running = torch.maximum(running, shared_max(lc, dims=(-2, -1)))
            decay = torch.exp(running - new_running)  # rescale the prefix to the new max
            state, norm = state * decay, norm * decay[..., 0]
            kc = torch.exp(lc - new_running)  # (B, H, C, m)
            within = (qc @ kc.transpose(-2, -1)).tril()  # (B, H, C, C) causal inside the chunk
            numerator = qc @ state + within @ vc
            denominator = (qc @ norm[..., None]).squeeze(-1) + within.sum(dim=-1)
            outputs.append(normalize(numerator, denominator))
            state = state + kc.transpose(-2, -1) @ vc
            norm = norm + kc.sum(dim=-2)
            running = new_running
        return torch.cat(outputs, dim=2)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, nb_features={self.nb_features}, "
            f"redraw_interval={self.redraw_interval}, chunk_size={self.chunk_size}"
        )
