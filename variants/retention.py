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

SCAN_BLOCK = 64  # chunks per block of the across-chunk scan: one (G, G) product inside, a loop over blocks


def decayed_prefix(summaries: torch.Tensor, log_decay: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """``S_c = sum_{c' < c} r^(c - 1 - c') X_c'`` for ``X = summaries (B, H, C, F)``, ``log r = log_decay (H,)``.

    The state each chunk starts from. Inside blocks of ``block`` chunks it is one matrix product with a
    ``(G, G)`` decay matrix; across blocks a loop carries the block's total: time and memory O(C x G).
    """
    block = block or SCAN_BLOCK
    batch, heads, count, features = summaries.shape
    size = min(block, count)
    padded = -count % size
    if padded:
        summaries = torch.nn.functional.pad(summaries, (0, 0, 0, padded))
    blocks = summaries.view(batch, heads, -1, size, features)  # (B, H, nb, G, F)
    index = torch.arange(size, device=summaries.device, dtype=summaries.dtype)
    gap = index[:, None] - index[None, :] - 1  # whole chunks between c' and c, -1 where c' >= c
    rate = log_decay[:, None, None]
    inside = (gap.clamp_min(0) * rate).exp() * (gap >= 0)  # (H, G, G), strictly lower
    states = inside[:, None] @ blocks  # (B, H, nb, G, F): sums from inside the block
    if blocks.shape[2] > 1:
        to_chunk = (index * log_decay[:, None]).exp()[:, :, None]  # (H, G, 1): r^g from the block's start
        to_end = ((size - 1 - index) * log_decay[:, None]).exp()[:, None, :]  # (H, 1, G): to the block's last chunk
        totals = (to_end[:, None] @ blocks).squeeze(-2)  # (B, H, nb, F): each block, decayed to its last chunk
        step = (size * log_decay).exp()[:, None]  # r^G
        carried = [torch.zeros_like(totals[:, :, 0])]
        for number in range(1, blocks.shape[2]):  # the state at each block's first chunk
            carried.append(carried[-1] * step + totals[:, :, number - 1])
        states = states + to_chunk[:, None] * torch.stack(carried, dim=2)[:, :, :, None, :]
    return states.reshape(batch, heads, -1, features)[:, :, :count]


def _from_other_chunks(q_decayed, k_decayed, v, chunk_log_decay, *, later: bool) -> torch.Tensor:
    """What each chunk's queries get from the keys of the earlier (or ``later``) chunks, through the states."""
    summaries = k_decayed.transpose(-2, -1) @ v  # (B, H, C, Dh, Dh): each chunk's keys and values
    flat = summaries.flatten(-2)
    if later:
        flat = flat.flip(2)
    states = decayed_prefix(flat, chunk_log_decay)
    if later:
        states = states.flip(2)
    return q_decayed @ states.view(summaries.shape)


def chunked_retention(q, k, v, log_gammas: torch.Tensor, chunk: int, *, causal: bool) -> torch.Tensor:
    """Retention ``(B, H, N, Dh)``, ``q`` pre-scaled, every chunk at once; ``log_gammas (H,)``.

    Inside a chunk: the parallel form with the ``(L, L)`` decay matrix. Across chunks: each chunk's
    ``(Dh, Dh)`` summary, a decayed prefix sum of them (:func:`decayed_prefix`), and the queries decayed
    from their chunk's start. Bidirectionally the same runs over the later chunks with the decay mirrored.
    """
    batch, heads, seq, dim = q.shape
    size = min(chunk, seq)
    padded = -seq % size
    if padded:  # zero keys and values add nothing; the padded queries are cut off below
        q, k, v = (torch.nn.functional.pad(t, (0, 0, 0, padded)) for t in (q, k, v))
    qc, kc, vc = (t.reshape(batch, heads, -1, size, dim) for t in (q, k, v))
    index = torch.arange(size, device=q.device, dtype=q.dtype)
    distance = index[:, None] - index[None, :]
    inside = (distance.abs() * log_gammas[:, None, None]).exp()  # (H, L, L)
    if causal:
        inside = inside * (distance >= 0)
    out = ((qc @ kc.transpose(-2, -1)) * inside[:, None]) @ vc
    if qc.shape[2] > 1:
        position = index * log_gammas[:, None]  # (H, L): log gamma^index
        chunk_log_decay = size * log_gammas

        def decayed(x: torch.Tensor, log_weight: torch.Tensor) -> torch.Tensor:
            return x * log_weight.exp()[:, None, :, None]

        last = (size - 1) * log_gammas[:, None]
        out = out + _from_other_chunks(
            decayed(qc, position + log_gammas[:, None]), decayed(kc, last - position), vc, chunk_log_decay, later=False
        )
        if not causal:
            out = out + _from_other_chunks(
                decayed(qc, last - position + log_gammas[:, None]),
                decayed(kc, position),
                vc,
                chunk_log_decay,
                later=True,
            )
    return out.reshape(batch, heads, -1, dim)[:, :, :seq]


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
            log_gammas = self.gammas().log().to(device=q.device, dtype=dtype)
            out = recomputed(chunked_retention, q, k, v, log_gammas, self.chunk_size, causal=self.causal)
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
