"""Reformer's chunked LSH attention as one custom autograd function that keeps O(n) memory.

Each hashing round sorts queries and keys by bucket; sorted query chunk ``c``
attends to sorted key chunks ``c`` and ``c - 1`` (chunk 0 of a round looks
back at the last chunk of the round before). Combining the rounds by their
log-sum-exps, as the paper does, is the same as one softmax per query over
all the keys its rounds gave it (duplicates counted), so the backward pass is
FlashAttention's: ``dS = P * (dP - rowsum(dO * O))`` with ``P`` recomputed
chunk by chunk from q and k. Only q, k, v, the output, the sort orders and one
log-sum-exp per round and query are kept for backward, and the transient
memory is bounded by ``CHUNK_ELEMENTS`` scores whatever the length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

CHUNK_ELEMENTS = 2**18  # scores per piece (1 MiB in fp32; a few are live at once). 2**19: whole model 1.30x full at
# n = 2048 instead of 1.25x; 2**17: 25% slower

SELF_LOGIT = -5e4  # the reference's logit for attention to oneself: only used when no other key is allowed


@dataclass(frozen=True)
class LshLayout:
    """Where each sorted query chunk looks: ``(BH, R, P)`` sort orders of queries and keys, and key validity.

    The orders are int32 (half the memory kept for backward); pieces widen them to int64 as they use them.
    """

    order_q: torch.Tensor
    order_k: torch.Tensor
    bucket_size: int
    valid: torch.Tensor | None  # (BH, P) bool: real keys; None: all

    @property
    def rounds(self) -> int:
        return self.order_q.shape[1]


class _Rounds:
    """The per-chunk pieces both passes rebuild: gathered queries, key windows, masked scores."""

    def __init__(self, q: torch.Tensor, k: torch.Tensor, layout: LshLayout) -> None:
        self.bh, self.padded, dim = q.shape
        self.layout = layout
        self.b = layout.bucket_size
        self.scale = 1.0 / math.sqrt(dim)
        self.acc = torch.promote_types(q.dtype, torch.float32)  # softmax and sums: fp32 at least
        self.offsets = torch.arange(self.bh, device=q.device)[:, None] * self.padded
        self.step = max(1, CHUNK_ELEMENTS // (self.bh * self.b * 2 * self.b))  # sorted chunks per piece

    def pieces(self) -> list[tuple[int, int, int]]:
        """``(round, first chunk, end chunk)`` pieces covering every round's sorted chunks."""
        chunks = self.padded // self.b
        return [
            (r, s, min(s + self.step, chunks)) for r in range(self.layout.rounds) for s in range(0, chunks, self.step)
        ]

    def positions(self, r: int, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Original positions of the piece's queries ``(BH, c, b)`` and of their keys ``(BH, c, 2b)``."""
        b, order_k = self.b, self.layout.order_k
        lo, hi = start * b, end * b
        query_pos = self.layout.order_q[:, r, lo:hi].view(self.bh, end - start, b)
        own = order_k[:, r, lo:hi]
        if start == 0:  # chunk 0 looks back at the previous round's last chunk (round 0: the last round's)
            back = torch.cat([order_k[:, r - 1, -b:], order_k[:, r, : hi - b]], dim=1)
        else:
            back = order_k[:, r, lo - b : hi - b]
        key_pos = torch.cat([own.view(self.bh, -1, b), back.view(self.bh, -1, b)], dim=2)
        return query_pos.long(), key_pos.long()

    def gather(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Rows ``pos`` of each ``(BH, P, Dh)`` sequence, as ``(*pos.shape, Dh)``."""
        flat = (pos.flatten(1) + self.offsets).flatten()
        return x.reshape(-1, x.shape[-1]).index_select(0, flat).view(*pos.shape, x.shape[-1])

    def scatter_add_(self, target: torch.Tensor, pos: torch.Tensor, rows: torch.Tensor) -> None:
        """``target[pos] += rows`` for ``(BH, P, Dh)`` ``target``."""
        flat = (pos.flatten(1) + self.offsets).flatten()
        target.view(-1, target.shape[-1]).index_add_(0, flat, rows.reshape(-1, rows.shape[-1]).to(target.dtype))

    def constant(self, query_pos: torch.Tensor, key_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Bool ``(BH, c, b, 2b)`` masks of the scores that are constants: attention to oneself, and invalid keys."""
        own = query_pos[..., None] == key_pos[:, :, None, :]
        if self.layout.valid is None:
            return own, None
        invalid = ~self.layout.valid.gather(1, key_pos.flatten(1)).view_as(key_pos)[:, :, None, :]
        return own, invalid

    def scores(self, queries: torch.Tensor, keys: torch.Tensor, own: torch.Tensor, invalid) -> torch.Tensor:
        """fp32 ``(BH, c, b, 2b)`` scaled scores with invalid keys at the minimum and oneself at ``SELF_LOGIT``."""
        scores = ((queries * self.scale) @ keys.transpose(-1, -2)).to(self.acc)
        if invalid is not None:
            scores.masked_fill_(invalid, torch.finfo(self.acc).min)
        return scores.masked_fill_(own, SELF_LOGIT)

    def dropout_keep(self, probs: torch.Tensor, p: float, seed: int, piece: int) -> torch.Tensor:
        """The piece's keep mask over ``1 - p``, regenerated identically from ``seed`` and the piece number."""
        generator = torch.Generator(device=probs.device).manual_seed(seed + piece)
        keep = torch.rand(probs.shape, generator=generator, device=probs.device) >= p
        return keep.to(probs.dtype).div_(1 - p)


def _forward(q, k, v, layout: LshLayout, dropout_p: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The output ``(BH, P, Dh)`` and each round's log-sum-exp per query ``(R, BH, P)``, in original order."""
    k = F.normalize(k, dim=-1)  # unit keys, as the reference; recomputed in backward rather than kept
    rounds = _Rounds(q, k, layout)
    lse_rounds = torch.empty(layout.rounds, rounds.bh, rounds.padded, dtype=rounds.acc, device=q.device)
    out = round_out = None
    for piece, (r, start, end) in enumerate(rounds.pieces()):
        if start == 0:
            round_out = torch.empty(q.shape, dtype=rounds.acc, device=q.device)
        query_pos, key_pos = rounds.positions(r, start, end)
        scores = rounds.scores(
            rounds.gather(q, query_pos), rounds.gather(k, key_pos), *rounds.constant(query_pos, key_pos)
        )
        lse = scores.logsumexp(dim=-1)
        probs = scores.softmax(dim=-1)
        if dropout_p > 0:
            probs.mul_(rounds.dropout_keep(probs, dropout_p, seed, piece))
        piece_out = probs.to(v.dtype) @ rounds.gather(v, key_pos)
        round_out.view(-1, q.shape[-1]).index_copy_(
            0, (query_pos.flatten(1) + rounds.offsets).flatten(), piece_out.reshape(-1, q.shape[-1]).to(rounds.acc)
        )
        lse_rounds[r].scatter_(1, query_pos.flatten(1), lse.flatten(1))
        if end * rounds.b == rounds.padded:  # the round is complete: fold it into the running combination
            if out is None:
                out, lse_total = round_out, lse_rounds[r].clone()
            else:
                new_total = torch.logaddexp(lse_total, lse_rounds[r])
                out.mul_((lse_total - new_total).exp_()[..., None])
                out.add_(round_out.mul_((lse_rounds[r] - new_total).exp_()[..., None]))
                lse_total = new_total
    return out.to(q.dtype), lse_rounds


def _backward(q, k_raw, v, out, grad_out, lse_rounds, layout: LshLayout, dropout_p: float, seed: int):
    with torch.enable_grad():
        k_leaf = k_raw.detach().requires_grad_()
        unit = F.normalize(k_leaf, dim=-1)
    k = unit.detach()
    rounds = _Rounds(q, k, layout)
    acc = rounds.acc
    lse_total = lse_rounds.logsumexp(dim=0)  # (BH, P)
    delta = (grad_out.to(acc) * out.to(acc)).sum(dim=-1)  # rowsum(dO * O), (BH, P)
    grads = [torch.zeros(t.shape, dtype=acc, device=t.device) for t in (q, k, v)]
    grad_q, grad_k, grad_v = grads
    for piece, (r, start, end) in enumerate(rounds.pieces()):
        query_pos, key_pos = rounds.positions(r, start, end)
        queries, keys, values = rounds.gather(q, query_pos), rounds.gather(k, key_pos), rounds.gather(v, key_pos)
        own, invalid = rounds.constant(query_pos, key_pos)
        probs = rounds.scores(queries, keys, own, invalid).softmax(dim=-1)
        # the round's share of each query's joint softmax over all rounds
        share = (lse_rounds[r].gather(1, query_pos.flatten(1)) - lse_total.gather(1, query_pos.flatten(1))).exp_()
        probs.mul_(share.view(*query_pos.shape, 1))
        d_out = rounds.gather(grad_out, query_pos)  # (BH, c, b, Dh)
        d_probs = (d_out @ values.transpose(-1, -2)).to(acc)
        if dropout_p > 0:
            keep = rounds.dropout_keep(probs, dropout_p, seed, piece)
            d_probs.mul_(keep)
            grad_values = (probs * keep).to(v.dtype).transpose(-1, -2) @ d_out
        else:
            grad_values = probs.to(v.dtype).transpose(-1, -2) @ d_out
        row_delta = delta.gather(1, query_pos.flatten(1)).view(*query_pos.shape, 1)
        d_scores = d_probs.sub_(row_delta).mul_(probs).masked_fill_(own, 0)
        if invalid is not None:
            d_scores.masked_fill_(invalid, 0)
        d_scores = d_scores.to(q.dtype)
        rounds.scatter_add_(grad_q, query_pos, (d_scores @ keys).mul_(rounds.scale))
        rounds.scatter_add_(grad_k, key_pos, (d_scores.transpose(-1, -2) @ queries).mul_(rounds.scale))
        rounds.scatter_add_(grad_v, key_pos, grad_values)
    (grad_k,) = torch.autograd.grad(unit, k_leaf, grad_k.to(k.dtype))  # through the normalization
    return grad_q.to(q.dtype), grad_k, grad_v.to(v.dtype)


class _LshAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, layout: LshLayout, dropout_p: float, seed: int):
        with torch.autocast(q.device.type, enabled=False):  # matmuls in the inputs' dtype, softmax in fp32
            out, lse_rounds = _forward(q, k, v, layout, dropout_p, seed)
        ctx.save_for_backward(q, k, v, out, lse_rounds)
        ctx.layout, ctx.dropout_p, ctx.seed = layout, dropout_p, seed
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse_rounds = ctx.saved_tensors
        with torch.autocast(grad_out.device.type, enabled=False):
            grads = _backward(q, k, v, out, grad_out.contiguous(), lse_rounds, ctx.layout, ctx.dropout_p, ctx.seed)
        return *grads, None, None, None


def lsh_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: LshLayout, *, dropout_p: float = 0.0
) -> torch.Tensor:
    """``(BH, P, Dh)`` queries, keys and values in, ``(BH, P, Dh)`` out; ``P`` a multiple of the bucket size.

    Keys are unit-normalized inside (the reference's shared-QK attention does so).
    """
    seed = int(torch.randint(2**62, (1,))) if dropout_p > 0 else 0  # from the global RNG, like F.dropout
    dtype = q.dtype
    return _LshAttention.apply(
        q.contiguous(), k.to(dtype).contiguous(), v.to(dtype).contiguous(), layout, dropout_p, seed
    )
