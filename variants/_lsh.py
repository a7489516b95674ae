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

Both passes work in sorted order where they can: a query's own key (which
gets ``SELF_LOGIT``) is found from the keys' ranks, not by comparing every
query with every key of its window, and the backward pass adds each chunk's
gradients to slices of per-round buffers in sorted order and takes them back
to original positions once per round (one gather instead of a scatter-add
per chunk); the forward takes the softmax and its log-sum-exp from one exp.
With larger pieces and reformer's cheaper hashing, the whole model at
n = 2048 (batch 2) went from 0.82x to 1.06x ``full``'s training speed
(interleaved in one process, against the kernel of commit 6aca579).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

CHUNK_ELEMENTS = 2**19  # scores per piece (2 MiB in fp32; a few are live at once). Whole model at n = 2048, batch 2
# (interleaved in one process): step time / full 1.01 against 1.16 with 2**18 (per-piece overheads), the
# step's live tensors 45.3 MiB against 43.2 (full: 39.8); 2**20: no faster, 55.5 MiB

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


def _ranks(order: torch.Tensor) -> torch.Tensor:
    """``(BH, R, P)`` int64: ``rank[:, r, p]`` is where position ``p`` sits in round ``r``'s sorted ``order``."""
    order = order.long()
    positions = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(2, order, positions)


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
        self.rank = _ranks(layout.order_k)  # finds each query's own key without comparing it with its whole window

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

    def add_windows_(self, sorted_grad: torch.Tensor, grad: torch.Tensor, r: int, start: int, rows: torch.Tensor):
        """Put the ``(BH, c, 2b, Dh)`` window rows of sorted chunks ``start..`` into round ``r``'s gradient in sorted
        key order: slices, not scatters (the look-back of chunk 0, the previous round's, goes to ``grad`` at its
        original positions). Pieces come in order, so a chunk's own rows are its first: they are copied, which
        spares zeroing ``sorted_grad``, and the look-back rows are added to chunks already written."""
        b, dim = self.b, rows.shape[-1]
        lo, hi = start * b, (start + rows.shape[1]) * b
        sorted_grad[:, lo:hi] = rows[:, :, :b].reshape(self.bh, -1, dim)
        back = rows[:, :, b:]
        if start == 0:
            self.scatter_add_(grad, self.layout.order_k[:, r - 1, -b:].long(), back[:, 0])
            back = back[:, 1:]
            lo += b
        sorted_grad[:, lo - b : hi - b].add_(back.reshape(self.bh, -1, dim))

    def unsort_add_(self, grad: torch.Tensor, sorted_grad: torch.Tensor, rank: torch.Tensor) -> None:
        """``grad += sorted_grad`` taken back to original positions: row ``p`` is sorted row ``rank[:, p]``."""
        flat = (rank + self.offsets).flatten()
        grad.view(-1, grad.shape[-1]).add_(sorted_grad.view(-1, grad.shape[-1]).index_select(0, flat))

    def own_slots(self, r: int, start: int, query_pos: torch.Tensor) -> list[torch.Tensor]:
        """Where each query's own key sits in its ``2b`` window, as ``(BH * c * b, 1)`` indices, -1 where absent.

        Two tensors: the own chunk (slots ``0..b-1``) and the look-back chunk (``b..2b-1``). A position appears
        once per round, so only chunk 0, whose look-back is the previous round's last chunk, can hold it twice.
        """
        b = self.b
        chunks = self.padded // b
        flat = query_pos.flatten(1)
        rank = self.rank[:, r].gather(1, flat).view_as(query_pos)
        chunk = torch.arange(start, start + query_pos.shape[1], device=rank.device)[None, :, None]
        own = torch.where(rank // b == chunk, rank % b, -1)
        back = torch.where(rank // b == chunk - 1, b + rank % b, -1)
        if start == 0:  # chunk 0 looks back at the previous round's last chunk
            previous = self.rank[:, r - 1].gather(1, flat[:, :b])
            back[:, 0] = torch.where(previous // b == chunks - 1, b + previous % b, -1)
        return [own.view(-1, 1), back.view(-1, 1)]

    def invalid(self, key_pos: torch.Tensor) -> torch.Tensor | None:
        """Bool ``(BH, c, 1, 2b)``: the window's keys that are padding (None: every key is real)."""
        if self.layout.valid is None:
            return None
        return ~self.layout.valid.gather(1, key_pos.flatten(1)).view_as(key_pos)[:, :, None, :]

    @staticmethod
    def fill_slots_(x: torch.Tensor, slots: list[torch.Tensor], value: float) -> torch.Tensor:
        """``x[..., slot] = value`` in each row of ``(..., 2b)`` ``x`` whose slot is not -1."""
        rows = x.view(-1, x.shape[-1])
        for slot in slots:
            present = slot >= 0
            index = slot.clamp(min=0)
            rows.scatter_(1, index, torch.where(present, value, rows.gather(1, index)))
        return x

    def scores(self, queries: torch.Tensor, keys: torch.Tensor, own: list[torch.Tensor], invalid) -> torch.Tensor:
        """fp32 ``(BH, c, b, 2b)`` scaled scores with invalid keys at the minimum and oneself at ``SELF_LOGIT``."""
        scores = ((queries * self.scale) @ keys.transpose(-1, -2)).to(self.acc)
        if invalid is not None:
            scores.masked_fill_(invalid, torch.finfo(self.acc).min)
        return self.fill_slots_(scores, own, SELF_LOGIT)

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
        own = rounds.own_slots(r, start, query_pos)
        scores = rounds.scores(rounds.gather(q, query_pos), rounds.gather(k, key_pos), own, rounds.invalid(key_pos))
        top = scores.amax(dim=-1, keepdim=True)  # the softmax and its log-sum-exp in one pass of exp, in place
        probs = scores.sub_(top).exp_()
        total = probs.sum(dim=-1, keepdim=True)
        probs.div_(total)
        lse = (top + total.log()).squeeze(-1)
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
    rank_q = _ranks(layout.order_q)
    for piece, (r, start, end) in enumerate(rounds.pieces()):
        if start == 0:  # each round's gradients gathered in its sorted orders, taken back once the round is done
            sorted_q, sorted_k, sorted_v = (torch.empty(t.shape, dtype=acc, device=t.device) for t in (q, k, v))
        query_pos, key_pos = rounds.positions(r, start, end)
        queries, keys, values = rounds.gather(q, query_pos), rounds.gather(k, key_pos), rounds.gather(v, key_pos)
        own, invalid = rounds.own_slots(r, start, query_pos), rounds.invalid(key_pos)
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
        d_scores = rounds.fill_slots_(d_probs.sub_(row_delta).mul_(probs), own, 0.0)
        if invalid is not None:
            d_scores.masked_fill_(invalid, 0)
        d_scores = d_scores.to(q.dtype)
        sorted_q[:, start * rounds.b : end * rounds.b] = (d_scores @ keys).mul_(rounds.scale).flatten(1, 2)
        rounds.add_windows_(sorted_k, grad_k, r, start, (d_scores.transpose(-1, -2) @ queries).mul_(rounds.scale))
        rounds.add_windows_(sorted_v, grad_v, r, start, grad_values)
        if end * rounds.b == rounds.padded:
            rounds.unsort_add_(grad_q, sorted_q, rank_q[:, r])
            rounds.unsort_add_(grad_k, sorted_k, rounds.rank[:, r])
            rounds.unsort_add_(grad_v, sorted_v, rounds.rank[:, r])
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
