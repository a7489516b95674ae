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
from variants._recompute import recomputed

CHUNK_ELEMENTS = 2**18  # (L, L) scores per group of chunks that one recomputation holds (2**17: 25% slower)


class _Decays:
    """The decay factors of one chunk length, per head, in log space: ``log gamma^m`` is ``m * log gamma``."""

    def __init__(self, log_gammas: torch.Tensor, size: int, count: int) -> None:
        index = torch.arange(size, device=log_gammas.device, dtype=log_gammas.dtype)
        rate = log_gammas[:, None]  # (H, 1)
        self.rate, self.size, self.index = rate, size, index
        self.to_chunk_end = ((size - 1 - index) * rate).exp()[:, None, :, None]  # (H, 1, L, 1): gamma^(L-1-b)
        self.from_chunk_start = (index * rate).exp()[:, None, :, None]  # gamma^b
        chunks = torch.arange(count, device=log_gammas.device, dtype=log_gammas.dtype)
        gap = chunks[:, None] - chunks[None, :] - 1  # whole chunks between c' and c; -1 where c' >= c
        self.across = (gap.clamp_min(0) * size * log_gammas[:, None, None]).exp() * (gap >= 0)  # (H, g, g)
        self.chunks = chunks

    def inside(self, causal: bool) -> torch.Tensor:
        """``(H, 1, L, L)``: ``gamma^(i - j)`` for ``j <= i`` (causal) or ``gamma^|i - j|``."""
        distance = self.index[:, None] - self.index[None, :]
        weights = (distance.abs() * self.rate[:, :, None]).exp()
        return (weights * (distance >= 0) if causal else weights)[:, None]

    def chunk_power(self, exponent: torch.Tensor) -> torch.Tensor:
        """``(H, g, 1, 1)``: ``(gamma^L)^exponent`` per chunk of the group."""
        return (exponent * self.size * self.rate).exp()[:, :, None, None]


def _summaries(kc: torch.Tensor, vc: torch.Tensor, key_decay: torch.Tensor) -> torch.Tensor:
    """``(B, H, g, Dh, Dh)``: each chunk's keys (decayed to one end of their chunk) times its values."""
    return (kc * key_decay).transpose(-2, -1) @ vc


def _carry(state, kc, vc, log_gammas, *, later: bool) -> torch.Tensor:
    """The state past one group of chunks, from the state before it (in the direction of travel)."""
    count, size = kc.shape[2], kc.shape[3]
    decays = _Decays(log_gammas, size, count)
    if later:  # travelling backwards: keys decayed to their chunk's start, the group's first chunk last
        summaries = _summaries(kc, vc, decays.from_chunk_start)
        weights = decays.chunk_power(decays.chunks)
    else:
        summaries = _summaries(kc, vc, decays.to_chunk_end)
        weights = decays.chunk_power(count - 1 - decays.chunks)
    return state * (count * size * log_gammas).exp()[:, None, None] + (summaries * weights).sum(2)


def _group_out(qc, kc, vc, before, after, log_gammas, *, causal: bool, scale: float) -> torch.Tensor:
    """One group's outputs ``(B, H, g, L, Dh)``: its own chunks plus the states from before (and after) it."""
    count, size = qc.shape[2], qc.shape[3]
    decays = _Decays(log_gammas, size, count)
    out = ((qc @ kc.transpose(-2, -1)) * (decays.inside(causal) * scale)) @ vc  # the scale on (L, L), not q
    # Earlier chunks: S_c = (gamma^L)^c before + sum_{c' < c} (gamma^L)^(c-1-c') X_c'; query i sees gamma^(i+1) S_c.
    summaries = _summaries(kc, vc, decays.to_chunk_end).flatten(-2)
    dim = before.shape[-1]
    one_more = decays.rate.exp()[:, None, :, None] * scale  # a query's step past its chunk's edge, and the scale
    states = decays.chunk_power(decays.chunks) * before[:, :, None]
    states = states + (decays.across @ summaries).view(*summaries.shape[:3], dim, dim)
    out = out + (qc * (decays.from_chunk_start * one_more)) @ states
    if not causal:  # later chunks, mirrored: query i sees gamma^(L-i) times the state after its chunk
        summaries = _summaries(kc, vc, decays.from_chunk_start).flatten(-2)
        states = decays.chunk_power(count - 1 - decays.chunks) * after[:, :, None]
        states = states + (decays.across.transpose(-2, -1) @ summaries).view(*summaries.shape[:3], dim, dim)
        out = out + (qc * (decays.to_chunk_end * one_more)) @ states
    return out


def chunked_retention(
    q, k, v, log_gammas: torch.Tensor, chunk: int, *, causal: bool, scale: float = 1.0
) -> torch.Tensor:
    """Retention ``(B, H, N, Dh)``, scores times ``scale``; ``log_gammas (H,)``. O(n) memory in training.

    Chunks of ``chunk`` tokens go in groups: inside a group, every chunk at once (the parallel form with
    the ``(L, L)`` decay matrix, and each chunk's ``(Dh, Dh)`` state as a decayed sum of the earlier
    chunks' summaries: one product with a ``(g, g)`` matrix); across groups, the state is carried in a
    loop. Each group is recomputed in the backward pass (:func:`variants._recompute.recomputed`), so
    training keeps q, k, v and one ``(Dh, Dh)`` state per group, and holds one group's scores at a time.
    Bidirectionally a second state travels from the end over the strictly later chunks.
    """
    batch, heads, seq, dim = q.shape
    size = min(chunk, seq)
    padded = -seq % size
    if padded:  # zero keys and values add nothing; the padded queries are cut off below
        q, k, v = (torch.nn.functional.pad(t, (0, 0, 0, padded)) for t in (q, k, v))
    qc, kc, vc = (t.reshape(batch, heads, -1, size, dim) for t in (q, k, v))
    per_group = max(1, CHUNK_ELEMENTS // (batch * heads * size * size))
    # split, not slices: its backward joins the groups' gradients once (a slice's pads each to full size)
    qs, ks, vs = (t.split(per_group, dim=2) for t in (qc, kc, vc))
    zero = q.new_zeros(batch, heads, dim, dim)
    before = [zero]
    for kg, vg in zip(ks[:-1], vs[:-1], strict=True):
        before.append(recomputed(_carry, before[-1], kg, vg, log_gammas, later=False))
    after = [zero] * len(qs)
    if not causal:
        for number in reversed(range(len(qs) - 1)):
            after[number] = recomputed(
                _carry, after[number + 1], ks[number + 1], vs[number + 1], log_gammas, later=True
            )
    outs = [
        recomputed(_group_out, *group, log_gammas, causal=causal, scale=scale)
        for group in zip(qs, ks, vs, before, after, strict=True)
    ]
    return torch.cat(outs, dim=2).reshape(batch, heads, -1, dim)[:, :, :seq]


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
            if mask is not None:
                k = k * mask[:, None, :, None]  # a zero key gets zero weight
            log_gammas = self.gammas().log().to(device=q.device, dtype=dtype)
            scale = 1.0 / math.sqrt(self.dim_head)
            out = chunked_retention(q, k, v, log_gammas, self.chunk_size, causal=self.causal, scale=scale)
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
