"""Blocked softmax attention that keeps O(n) memory: the kernel of every blocked variant (local, sparse).

Sequences are cut into blocks of ``w`` tokens; each query block attends to a
few key blocks (its *slots*, listed in a :class:`BlockLayout`) plus optional
global keys, so work grows linearly in length. Memory grows linearly too, and
stays near the fused exact kernel's: :func:`blocked_attention` is a custom
autograd function in the style of FlashAttention. The forward pass walks over
chunks of query blocks, gathers each chunk's key windows, and keeps only the
output; the backward pass gathers the windows again and recomputes the
chunk's probabilities from q and k. No gathered copy of k or v, no score or
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

CHUNK_ELEMENTS = 2**19  # scores per chunk (2 MiB in fp32; about five such buffers are live at once)


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
    appended to every window (and masked inside the windows, so each is seen
    once), with validity ``global_ok`` ``(B|1, g)`` (None: all),
    and (``global_queries``) the first ``g`` queries attend to every key where
    ``real_keys`` ``(B|1, nb * w)`` is True (None: all). With ``causal_slot``
    set, query ``i`` sees global key ``j`` only if ``j <= i``. ``global_keys``
    ``(g,)``: positions of the global keys when they are not the first ``g``
    (then there are no global queries).
    """

    block: int
    index: torch.Tensor
    slot_ok: torch.Tensor | None = None
    key_ok: torch.Tensor | None = None
    causal_slot: int | None = None
    num_global: int = 0
    global_ok: torch.Tensor | None = None
    real_keys: torch.Tensor | None = None
    global_queries: bool = True
    global_keys: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.global_keys is not None and (self.global_queries or self.global_keys.numel() != self.num_global):
            raise ValueError("global_keys needs global_queries=False and num_global == len(global_keys)")

    def global_positions(self, device: torch.device) -> torch.Tensor:
        """``(g,)`` positions of the global keys."""
        if self.global_keys is not None:
            return self.global_keys
        return torch.arange(self.num_global, device=device)

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
        if self.num_global:  # a global key is seen once: from the appended keys, never inside a window
            not_global = torch.ones(nb * self.block, dtype=torch.bool, device=device)
            not_global[self.global_positions(device)] = False
            windows = windows & not_global.view(nb, self.block)[self.index][None]
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
        self.q_flat, self.k_flat, self.v_flat = q, k, v  # (B, H, nb * w, Dh), padded
        self.q, self.k, self.v = (t.view(self.shape) for t in (q, k, v))
        if layout.global_keys is None:  # views: the first g keys
            self.k_global, self.v_global = k[:, :, None, : layout.num_global], v[:, :, None, : layout.num_global]
        else:  # gathered once per pass: (B, H, 1, g, Dh)
            self.k_global, self.v_global = (t.index_select(2, layout.global_keys)[:, :, None] for t in (k, v))
        self.scale = 1.0 / math.sqrt(dim)
        self.acc = torch.promote_types(q.dtype, torch.float32)  # softmax and sums: fp32 at least
        self.allowed = layout.allowed()
        per_block = batch * heads * w * layout.window
        self.step = max(1, CHUNK_ELEMENTS // per_block)
        self.triangle = self.global_triangle = None
        if layout.causal_slot is not None:
            self.triangle = torch.ones(w, w, dtype=torch.bool, device=q.device).tril()
            if layout.num_global:  # (nb * w, g): query i sees global key j <= i
                rows = torch.arange(padded, device=q.device)[:, None]
                positions = layout.global_positions(q.device)
                self.global_triangle = rows >= positions[None, :]
                self.last_global = int(positions.max())

    def ranges(self) -> list[tuple[int, int]]:
        """Chunks of query blocks, each with at most ``CHUNK_ELEMENTS`` scores (one block at least)."""
        return [(s, min(s + self.step, self.nb)) for s in range(0, self.nb, self.step)]

    def global_ranges(self) -> list[tuple[int, int]]:
        """Chunks of the global query rows, which attend to every key."""
        batch, heads, padded, _ = self.q_flat.shape
        step = max(1, CHUNK_ELEMENTS // (batch * heads * padded))
        g = self.layout.num_global if self.layout.global_queries else 0
        return [(s, min(s + step, g)) for s in range(0, g, step)]

    def global_probabilities(self, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled queries ``start:end`` and their fp32 probabilities over every real key ``(B, H, r, N)``."""
        q_scaled = self.q_flat[:, :, start:end] * self.scale
        scores = (q_scaled @ self.k_flat.transpose(-1, -2)).to(self.acc)
        if self.layout.real_keys is not None:
            scores.masked_fill_(~self.layout.real_keys[:, None, None, :], torch.finfo(self.acc).min)
        return q_scaled, scores.softmax(dim=-1)

    def windows(self, blocks: torch.Tensor, extra: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """``(B, H, c, K, Dh)``: the slot blocks of query blocks ``start:end``, then the global keys."""
        batch, heads, _, w, dim = blocks.shape
        index = self.layout.index[start:end]
        gathered = blocks.index_select(2, index.flatten()).view(batch, heads, end - start, index.shape[1] * w, dim)
        if self.layout.num_global == 0:
            return gathered
        return torch.cat([gathered, extra.expand(-1, -1, end - start, -1, -1)], dim=3)

    def queries(self, start: int, end: int) -> torch.Tensor:
        """The chunk's queries times ``1/sqrt(Dh)``: scaling ``w x Dh`` queries is cheaper than ``w x K`` scores."""
        return self.q[:, :, start:end] * self.scale

    def probabilities(self, q_scaled: torch.Tensor, k_window: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """fp32 ``(B, H, c, w, K)`` softmax probabilities of the chunk, bit-identical in both passes.

        Disallowed keys are filled with the dtype's minimum, so they get exactly
        zero weight and a row with no allowed key (only padded queries have one)
        stays finite. The backward pass recomputes rather than stores these:
        the same inputs through the same ops give the same numbers, and
        ``softmax``'s vectorized kernel is several times faster than
        ``exp(scores - lse)`` (which hits the slow path for underflowing inputs).
        """
        scores = (q_scaled @ k_window.transpose(-1, -2)).to(self.acc)
        low = torch.finfo(self.acc).min
        if self.allowed is not None:
            allowed = self.allowed[:, start:end]
            if not bool(allowed.all()):
                scores.masked_fill_(~allowed[:, None, :, None, :], low)
        w, g = self.layout.block, self.layout.num_global
        if self.triangle is not None:
            slot = self.layout.causal_slot
            scores[..., slot * w : (slot + 1) * w].masked_fill_(~self.triangle, low)
        if self.global_triangle is not None and start * w <= self.last_global:  # blocks with later global keys
            rows = self.global_triangle[start * w : end * w].view(end - start, w, g)
            scores[..., scores.shape[-1] - g :].masked_fill_(~rows, low)
        return scores.softmax(dim=-1)

    def dropout_scale(self, probs: torch.Tensor, p: float, seed: int, chunk: int) -> torch.Tensor:
        """The chunk's keep mask over ``1 - p``, regenerated identically from ``seed`` and the chunk number."""
        generator = torch.Generator(device=probs.device).manual_seed(seed + chunk)
        keep = torch.rand(probs.shape, generator=generator, device=probs.device) >= p
        return keep.to(probs.dtype).div_(1 - p)


class _BlockedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, layout: BlockLayout, dropout_p: float, seed: int):
        with torch.autocast(q.device.type, enabled=False):  # computes in the inputs' dtype, softmax in fp32
            out = _blocked_forward(q, k, v, layout, dropout_p, seed)
        ctx.save_for_backward(q, k, v, out)
        ctx.layout, ctx.dropout_p, ctx.seed = layout, dropout_p, seed
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out = ctx.saved_tensors
        with torch.autocast(grad_out.device.type, enabled=False):
            grads = _blocked_backward(q, k, v, out, grad_out, ctx.layout, ctx.dropout_p, ctx.seed)
        return *grads, None, None, None


def _padded(layout: BlockLayout, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """The tensors padded to whole blocks (the same tensors, no copy, when the length is a multiple)."""
    return [pad_to_multiple(t.contiguous(), layout.block, dim=2) for t in tensors]


def _blocked_forward(q, k, v, layout: BlockLayout, dropout_p: float, seed: int) -> torch.Tensor:
    seq = q.shape[2]
    chunks = _Chunks(*_padded(layout, q, k, v), layout)
    out = torch.empty_like(chunks.q_flat)
    out_blocks = out.view(chunks.shape)
    for number, (start, end) in enumerate(chunks.ranges()):
        k_window = chunks.windows(chunks.k, chunks.k_global, start, end)
        v_window = chunks.windows(chunks.v, chunks.v_global, start, end)
        probs = chunks.probabilities(chunks.queries(start, end), k_window, start, end)
        if dropout_p > 0:
            probs.mul_(chunks.dropout_scale(probs, dropout_p, seed, number))
        out_blocks[:, :, start:end] = probs.to(v.dtype) @ v_window
    for number, (start, end) in enumerate(chunks.global_ranges(), start=len(chunks.ranges())):
        _, probs = chunks.global_probabilities(start, end)
        if dropout_p > 0:
            probs.mul_(chunks.dropout_scale(probs, dropout_p, seed, number))
        out[:, :, start:end] = probs.to(v.dtype) @ chunks.v_flat
    return out if out.shape[2] == seq else out[:, :, :seq].contiguous()


def _blocked_backward(q, k, v, out, grad_out, layout: BlockLayout, dropout_p: float, seed: int):
    seq = q.shape[2]
    chunks = _Chunks(*_padded(layout, q, k, v), layout)
    out, grad_out = _padded(layout, out, grad_out)
    acc, w, g = chunks.acc, layout.block, layout.num_global
    grad_q = torch.empty_like(chunks.q_flat)
    grad_k = torch.zeros_like(chunks.k_flat, dtype=acc)  # fp32 at least: keys get sums from many blocks
    grad_v = torch.zeros_like(chunks.v_flat, dtype=acc)
    grad_q_blocks, grad_k_blocks, grad_v_blocks = (t.view(chunks.shape) for t in (grad_q, grad_k, grad_v))
    out_blocks, grad_out_blocks = out.view(chunks.shape), grad_out.view(chunks.shape)
    slots = layout.index.shape[1]
    for number, (start, end) in enumerate(chunks.ranges()):
        q_scaled, d_out = chunks.queries(start, end), grad_out_blocks[:, :, start:end]
        if layout.global_queries and start * w < g:  # global query rows get their gradient from the global pass
            d_out = d_out.clone()
            d_out.flatten(2, 3)[:, :, : g - start * w] = 0
        delta = (d_out.to(acc) * out_blocks[:, :, start:end].to(acc)).sum(dim=-1, keepdim=True)  # rowsum(dO * O)
        k_window = chunks.windows(chunks.k, chunks.k_global, start, end)
        v_window = chunks.windows(chunks.v, chunks.v_global, start, end)
        probs = chunks.probabilities(q_scaled, k_window, start, end)
        d_probs = (d_out @ v_window.transpose(-1, -2)).to(acc)  # (B, H, c, w, K)
        if dropout_p > 0:
            keep = chunks.dropout_scale(probs, dropout_p, seed, number)
            d_probs.mul_(keep)
            grad_v_window = (probs * keep).to(v.dtype).transpose(-1, -2) @ d_out
        else:
            grad_v_window = probs.to(v.dtype).transpose(-1, -2) @ d_out  # (B, H, c, K, Dh)
        d_scores = d_probs.sub_(delta).mul_(probs).to(q.dtype)  # gradient of the scaled scores
        grad_q_blocks[:, :, start:end] = (d_scores @ k_window).mul_(chunks.scale)
        grad_k_window = d_scores.transpose(-1, -2) @ q_scaled  # (B, H, c, K, Dh)
        for grad_blocks, grad_window in ((grad_k_blocks, grad_k_window), (grad_v_blocks, grad_v_window)):
            _scatter_window(grad_blocks, grad_window, layout.index[start:end], slots, w)
            if g:
                grad_global = grad_window[:, :, :, slots * w :].sum(dim=2).to(grad_blocks.dtype)
                grad_blocks.flatten(2, 3).index_add_(2, layout.global_positions(q.device), grad_global)
    for number, (start, end) in enumerate(chunks.global_ranges(), start=len(chunks.ranges())):
        q_scaled, probs = chunks.global_probabilities(start, end)
        d_out = grad_out[:, :, start:end]
        delta = (d_out.to(acc) * out[:, :, start:end].to(acc)).sum(dim=-1, keepdim=True)
        d_probs = (d_out @ chunks.v_flat.transpose(-1, -2)).to(acc)  # (B, H, r, N)
        if dropout_p > 0:
            keep = chunks.dropout_scale(probs, dropout_p, seed, number)
            d_probs.mul_(keep)
            _add_product_(grad_v, (probs * keep).transpose(-1, -2), d_out)
        else:
            _add_product_(grad_v, probs.transpose(-1, -2), d_out)
        d_scores = d_probs.sub_(delta).mul_(probs)
        grad_q[:, :, start:end] = (d_scores.to(q.dtype) @ chunks.k_flat).mul_(chunks.scale)
        _add_product_(grad_k, d_scores.transpose(-1, -2), q_scaled)
    return (grad[:, :, :seq].to(dtype) for grad, dtype in ((grad_q, q.dtype), (grad_k, k.dtype), (grad_v, v.dtype)))


def _add_product_(target: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``target += a @ b`` in place (batched over leading dims), with no ``target``-sized temporary."""
    flat = target.view(-1, *target.shape[-2:])
    flat.baddbmm_(a.reshape(-1, *a.shape[-2:]).to(target.dtype), b.reshape(-1, *b.shape[-2:]).to(target.dtype))


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
    """Softmax attention of each query block over the keys ``layout`` gives it; ``(B, H, N, Dh)`` in and out.

    Any length: padding to whole blocks happens inside, one pass at a time.
    With ``layout.num_global`` the first ``g`` queries attend to every real
    key. O(n) memory in training: see the module docstring.
    """
    seed = int(torch.randint(2**62, (1,))) if dropout_p > 0 else 0  # from the global RNG, like F.dropout
    return _BlockedAttention.apply(q, k.to(q.dtype), v.to(q.dtype), layout, dropout_p, seed)
