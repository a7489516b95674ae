"""Blocked softmax attention that keeps O(n) memory: the kernel of every blocked variant (local, sparse).

Sequences are cut into blocks of ``w`` tokens; each query block attends to a
few key blocks (its *slots*, listed in a :class:`BlockLayout`) plus optional
global keys, so work grows linearly in length. Memory grows linearly too, and
stays near the fused exact kernel's: :func:`blocked_attention` is a custom
autograd function in the style of FlashAttention. The forward pass walks over
chunks of query blocks, gathers each chunk's key windows, and keeps only the
output and the row log-sum-exp; the backward pass gathers and recomputes the
chunk's scores from q, k, v. No gathered copy of k or v, no score or
probability matrix outlives its chunk, and the transient memory is bounded
by ``CHUNK_ELEMENTS`` scores whatever the length.

Attention dropout draws its mask from a generator seeded per chunk in the
forward pass, so the backward pass regenerates the same mask instead of
storing it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

CHUNK_ELEMENTS = 2**21  # scores per chunk: 8 MiB in fp32; a few such buffers are live at once


def pad_to_multiple(x: torch.Tensor, multiple: int, *, dim: int, value: float | bool = 0) -> torch.Tensor:
    """Pad ``x`` at the end of ``dim`` so its length is a multiple of ``multiple``."""
    remainder = -x.shape[dim] % multiple
    if remainder == 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - (dim % x.dim())) + [0, remainder]
    return F.pad(x, pad, value=value)


def key_validity(mask: torch.Tensor | None, seq: int, padded: int, device: torch.device) -> torch.Tensor | None:
    """Bool ``(B|1, padded)``: True for real keys, False for user and internal padding; None if all are real."""
    if mask is None and padded == seq:
        return None
    valid = torch.ones(1, seq, dtype=torch.bool, device=device) if mask is None else mask
    return pad_to_multiple(valid, padded, dim=1, value=False)


@dataclass(frozen=True)
class BlockLayout:
    """Which keys each query block sees.

    ``index`` ``(nb, S)``: the key block in each of a query block's ``S`` slots
    (any valid block number where ``slot_ok`` is False). ``slot_ok`` ``(nb, S)``:
    which slots are real (None: all). ``key_ok`` ``(B|1, nb * w)``: which keys
    may be seen from a window (padding, user mask; None: all).
    ``causal_slot``: the slot that holds the query's own block, where a query
    sees only the keys up to itself. ``num_global``: the first ``g`` keys are
    appended to every window, with validity ``global_ok`` ``(B|1, g)`` (None: all).
    """

    block: int
    index: torch.Tensor
    slot_ok: torch.Tensor | None = None
    key_ok: torch.Tensor | None = None
    causal_slot: int | None = None
    num_global: int = 0
    global_ok: torch.Tensor | None = None

    @property
    def window(self) -> int:
        """Keys per query block: the slots' keys and the global keys."""
        return self.index.shape[1] * self.block + self.num_global

    def allowed(self) -> torch.Tensor | None:
        """Bool ``(B|1, nb, K)``: which window keys each query block may see (None: all); small, O(n K / w)."""
        nb, slots = self.index.shape
        device = self.index.device
        windows = torch.ones(1, nb, slots, self.block, dtype=torch.bool, device=device)
        if self.slot_ok is not None:
            windows = windows & self.slot_ok[None, :, :, None]
        if self.key_ok is not None:
            windows = windows & self.key_ok.view(-1, nb, self.block)[:, self.index]
        windows = windows.flatten(2)
        if self.num_global:
            if self.global_ok is None:
                globals_ = torch.ones(1, nb, self.num_global, dtype=torch.bool, device=device)
            else:
                globals_ = self.global_ok[:, None, :].expand(-1, nb, -1)
            batch = max(windows.shape[0], globals_.shape[0])
            windows = torch.cat([windows.expand(batch, -1, -1), globals_.expand(batch, -1, -1)], dim=2)
        return None if bool(windows.all()) else windows


class _Chunks:
    """The per-chunk pieces both passes rebuild: key windows, masked scores, dropout masks."""

    def __init__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BlockLayout) -> None:
        batch, heads, padded, dim = q.shape
        w = layout.block
        self.nb = padded // w
        self.layout = layout
        self.shape = (batch, heads, self.nb, w, dim)
        self.q, self.k, self.v = (t.view(self.shape) for t in (q, k, v))
        self.k_global, self.v_global = k[:, :, None, : layout.num_global], v[:, :, None, : layout.num_global]
        self.scale = 1.0 / math.sqrt(dim)
        self.acc = torch.promote_types(q.dtype, torch.float32)  # softmax and sums: fp32 at least
        self.allowed = layout.allowed()
        per_block = batch * heads * w * layout.window
        self.step = max(1, CHUNK_ELEMENTS // per_block)
        self.triangle = None
        if layout.causal_slot is not None:
            self.triangle = torch.ones(w, w, dtype=torch.bool, device=q.device).tril()

    def ranges(self):
        return [(s, min(s + self.step, self.nb)) for s in range(0, self.nb, self.step)]

    def windows(self, blocks: torch.Tensor, extra: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """``(B, H, c, K, Dh)``: the slot blocks of query blocks ``start:end``, then the global keys."""
        batch, heads, _, w, dim = blocks.shape
        index = self.layout.index[start:end]
        gathered = blocks[:, :, index].reshape(batch, heads, end - start, index.shape[1] * w, dim)
        if self.layout.num_global == 0:
            return gathered
        return torch.cat([gathered, extra.expand(-1, -1, end - start, -1, -1)], dim=3)

    def probabilities(self, q_chunk: torch.Tensor, k_window: torch.Tensor, start: int, end: int, lse=None):
        """fp32 ``(B, H, c, w, K)`` probabilities of the chunk and, in the forward pass, their log-sum-exp.

        Disallowed keys get exactly zero weight; a row with no allowed key gets
        zeros everywhere (its log-sum-exp is stored as +inf).
        """
        scores = (q_chunk @ k_window.transpose(-1, -2)).to(self.acc).mul_(self.scale)
        if self.allowed is not None:
            allowed = self.allowed[:, start:end]
            if not bool(allowed.all()):
                scores.masked_fill_(~allowed[:, None, :, None, :], float("-inf"))
        if self.triangle is not None:
            w, slot = self.layout.block, self.layout.causal_slot
            scores[..., slot * w : (slot + 1) * w].masked_fill_(~self.triangle, float("-inf"))
        if lse is None:
            lse = scores.logsumexp(dim=-1)
            lse.masked_fill_(lse == float("-inf"), float("inf"))
        return scores.sub_(lse[..., None]).exp_(), lse

    def dropout_scale(self, probs: torch.Tensor, p: float, seed: int, chunk: int) -> torch.Tensor:
        """The chunk's keep mask over ``1 - p``, regenerated identically from ``seed`` and the chunk number."""
        generator = torch.Generator(device=probs.device).manual_seed(seed + chunk)
        keep = torch.rand(probs.shape, generator=generator, device=probs.device) >= p
        return keep.to(probs.dtype).div_(1 - p)


class _BlockedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, layout: BlockLayout, dropout_p: float, seed: int):
        with torch.autocast(q.device.type, enabled=False):  # computes in the inputs' dtype, softmax in fp32
            return _BlockedAttention._forward(ctx, q, k, v, layout, dropout_p, seed)

    @staticmethod
    def _forward(ctx, q, k, v, layout: BlockLayout, dropout_p: float, seed: int):
        chunks = _Chunks(q, k, v, layout)
        out = torch.empty_like(q)
        out_blocks = out.view(chunks.shape)
        lse = q.new_empty(chunks.shape[:-1], dtype=chunks.acc)
        for number, (start, end) in enumerate(chunks.ranges()):
            k_window = chunks.windows(chunks.k, chunks.k_global, start, end)
            v_window = chunks.windows(chunks.v, chunks.v_global, start, end)
            probs, lse[:, :, start:end] = chunks.probabilities(chunks.q[:, :, start:end], k_window, start, end)
            if dropout_p > 0:
                probs.mul_(chunks.dropout_scale(probs, dropout_p, seed, number))
            out_blocks[:, :, start:end] = probs.to(v.dtype) @ v_window
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.layout, ctx.dropout_p, ctx.seed = layout, dropout_p, seed
        return out

    @staticmethod
    def backward(ctx, grad_out):
        with torch.autocast(grad_out.device.type, enabled=False):
            return _BlockedAttention._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        layout, dropout_p = ctx.layout, ctx.dropout_p
        chunks = _Chunks(q, k, v, layout)
        g = layout.num_global
        grad_out = grad_out.contiguous().view(chunks.shape)
        acc = chunks.acc
        delta = (grad_out.to(acc) * out.view(chunks.shape).to(acc)).sum(dim=-1)  # (B, H, nb, w): rowsum(dO * O)
        grad_q = torch.empty_like(q)
        grad_k = torch.zeros_like(k, dtype=acc)  # fp32 at least: keys get sums from many blocks
        grad_v = torch.zeros_like(v, dtype=acc)
        grad_q_blocks, grad_k_blocks, grad_v_blocks = (t.view(chunks.shape) for t in (grad_q, grad_k, grad_v))
        slots = layout.index.shape[1]
        for number, (start, end) in enumerate(chunks.ranges()):
            q_chunk, d_out = chunks.q[:, :, start:end], grad_out[:, :, start:end]
            k_window = chunks.windows(chunks.k, chunks.k_global, start, end)
            v_window = chunks.windows(chunks.v, chunks.v_global, start, end)
            probs, _ = chunks.probabilities(q_chunk, k_window, start, end, lse[:, :, start:end])
            d_probs = (d_out @ v_window.transpose(-1, -2)).to(acc)  # (B, H, c, w, K)
            if dropout_p > 0:
                keep = chunks.dropout_scale(probs, dropout_p, ctx.seed, number)
                d_probs.mul_(keep)
                grad_v_window = (probs * keep).to(v.dtype).transpose(-1, -2) @ d_out
            else:
                grad_v_window = probs.to(v.dtype).transpose(-1, -2) @ d_out  # (B, H, c, K, Dh)
            d_scores = d_probs.sub_(delta[:, :, start:end, :, None]).mul_(probs).mul_(chunks.scale).to(q.dtype)
            grad_q_blocks[:, :, start:end] = d_scores @ k_window
            grad_k_window = d_scores.transpose(-1, -2) @ q_chunk  # (B, H, c, K, Dh)
            for grad_blocks, grad_window in ((grad_k_blocks, grad_k_window), (grad_v_blocks, grad_v_window)):
                _scatter_window(grad_blocks, grad_window, layout.index[start:end], slots, layout.block)
                if g:
                    grad_blocks.view(q.shape)[:, :, :g] += grad_window[:, :, :, slots * layout.block :].sum(dim=2)
        return grad_q, grad_k.to(k.dtype), grad_v.to(v.dtype), None, None, None


def _scatter_window(
    grad_blocks: torch.Tensor, grad_window: torch.Tensor, index: torch.Tensor, slots: int, w: int
) -> None:
    """Add each slot's window gradient ``(B, H, c, S * w + g, Dh)`` back onto its key block."""
    batch, heads, chunk, _, dim = grad_window.shape
    per_slot = grad_window[:, :, :, : slots * w].reshape(batch, heads, chunk, slots, w, dim).to(grad_blocks.dtype)
    for slot in range(slots):
        grad_blocks.index_add_(2, index[:, slot], per_slot[:, :, :, slot])


def blocked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BlockLayout, *, dropout_p: float = 0.0
) -> torch.Tensor:
    """Softmax attention of each query block over the keys ``layout`` gives it; ``(B, H, nb * w, Dh)`` in and out.

    Sequence lengths must be a multiple of ``layout.block`` (pad first). O(n)
    memory in training: see the module docstring.
    """
    seed = int(torch.randint(2**62, (1,))) if dropout_p > 0 else 0  # from the global RNG, like F.dropout
    k, v = k.to(q.dtype), v.to(q.dtype)
    return _BlockedAttention.apply(q.contiguous(), k.contiguous(), v.contiguous(), layout, dropout_p, seed)
