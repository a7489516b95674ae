"""Retention (Sun et al. 2023, "Retentive Network: A Successor to Transformer for Large Language Models").

``Retention(X) = (Q K^T / sqrt(d) * D) V`` with ``D_ij = gamma_h^(i - j)`` for
``j <= i`` (0 otherwise) and a fixed decay per head,
``gamma_h = 1 - 2^(-5 - h)`` (the paper's and flash-linear-attention's). No
softmax and no normalization: the weights are not a distribution (RetNet
follows retention with a GroupNorm, which belongs to the layer, not the core).

Three equal forms, as the paper gives them: the *parallel* form inside chunks
of ``chunk_size`` tokens, the *chunkwise* recurrence across chunks (a
``(Dh, Dh)`` state decayed by ``gamma^chunk``), so time and memory are
O(n * chunk + n d) rather than O(n^2); and the *recurrent* form for decoding,
``S_t = gamma S_{t-1} + k_t^T v_t``, ``o_t = q_t S_t / sqrt(d)``: a constant state.

Bidirectionally (not in the paper, which is causal) the decay is symmetric,
``gamma^|i - j|``: the causal form plus the same form run backwards over the
strictly later tokens, as vision RetNets do.
"""

from __future__ import annotations

import math

import torch

import variants


def chunkwise_retention(q, k, v, gammas: torch.Tensor, chunk: int, *, include_self: bool = True) -> torch.Tensor:
    """Causal retention ``(B, H, N, Dh)``, ``q`` pre-scaled; ``include_self=False``: keys strictly before."""
    batch, heads, seq, dim = q.shape
    out = torch.empty_like(v)
    state = v.new_zeros(batch, heads, dim, dim)
    log_gamma = gammas.log()[:, None, None]  # (H, 1, 1)
    offset = 0 if include_self else 1
    for start in range(0, seq, chunk):
        end = min(start + chunk, seq)
        length = end - start
        index = torch.arange(length, device=v.device, dtype=v.dtype)
        distance = index[:, None] - index[None, :]
        inside = (distance.clamp_min(0) * log_gamma).exp() * (distance >= offset)  # (H, L, L)
        qc, kc, vc = q[:, :, start:end], k[:, :, start:end], v[:, :, start:end]
        from_before = qc * ((index + 1)[:, None] * log_gamma).exp()  # queries decayed back to the chunk's start
        out[:, :, start:end] = ((qc @ kc.transpose(-2, -1)) * inside) @ vc + from_before @ state
        decayed_keys = kc * ((length - 1 - index)[:, None] * log_gamma).exp()
        state = state * (length * log_gamma).exp() + decayed_keys.transpose(-2, -1) @ vc
    return out


@variants.register("retention")
class RetentionAttention(variants.Attention):
    """RetNet retention: per-head exponential decay, chunkwise O(n * chunk), a constant ``(Dh, Dh)`` decoding state.

    Not normalized rows (``normalized_rows = False``); no attention dropout (``build`` refuses it).
    """

    family = "recurrent"
    supports_causal = True
    supports_dropout = False
    supports_decoding = True
    normalized_rows = False

    def __init__(self, *, chunk_size: int = 64, **common) -> None:
        super().__init__(**common)
        variants.check_range("chunk_size", chunk_size, low=1)
        self.chunk_size = chunk_size

    def gammas(self) -> torch.Tensor:
        """``(H,)`` float64 decays ``1 - 2^(-5 - h)``."""
        return 1 - 2.0 ** (-5 - torch.arange(self.heads, dtype=torch.float64))

    def attend(self, q, k, v, mask):
        with torch.autocast(device_type=q.device.type, enabled=False):
            out_dtype = q.dtype
            dtype = torch.promote_types(q.dtype, torch.float32)
            q, k, v = (t.to(dtype) for t in (q, k, v))
            q = q * (1.0 / math.sqrt(self.dim_head))
            if mask is not None:
                k = k * mask[:, None, :, None]  # a zero key gets zero weight
            gammas = self.gammas().to(device=q.device, dtype=dtype)
            out = chunkwise_retention(q, k, v, gammas, self.chunk_size)
            if not self.causal:  # the strictly later tokens: the same recurrence, run backwards
                flipped = (t.flip(2) for t in (q, k, v))
                out = out + chunkwise_retention(*flipped, gammas, self.chunk_size, include_self=False).flip(2)
        return out.to(out_dtype)

    def init_state(self, batch, *, device="cpu", dtype=torch.float32):
        self._check_decoding()
        dtype = torch.promote_types(dtype, torch.float32)
        return {
            "kv": torch.zeros(batch, self.heads, self.dim_head, self.dim_head, device=device, dtype=dtype),
            "position": torch.zeros((), dtype=torch.long, device=device),
        }

    def decode_step(self, q, k, v, state):
        kv = state["kv"]
        gammas = self.gammas().to(device=kv.device, dtype=kv.dtype)[:, None, None]
        kv = kv * gammas + k.to(kv.dtype).transpose(-2, -1) @ v.to(kv.dtype)
        out = (q.to(kv.dtype) * (1.0 / math.sqrt(self.dim_head))) @ kv
        return out.to(q.dtype), {"kv": kv, "position": state["position"] + 1}

    def prefill(self, q, k, v):
        self._check_decoding()
        state = self.init_state(q.shape[0], device=q.device, dtype=q.dtype)
        dtype = state["kv"].dtype
        seq = q.shape[2]
        age = torch.arange(seq - 1, -1, -1, device=q.device, dtype=torch.float64)  # steps since each token
        weights = (age[None, :] * self.gammas().to(q.device).log()[:, None]).exp().to(dtype)  # (H, N)
        kv = (k.to(dtype) * weights[:, :, None]).transpose(-2, -1) @ v.to(dtype)
        return self(q, k, v), {"kv": kv, "position": state["position"] + seq}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, chunk_size={self.chunk_size}"
