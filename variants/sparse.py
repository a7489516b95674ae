"""Block-sparse attention in the BigBird style (Zaheer et al. 2020).

Three kinds of links, all at block granularity except the globals:
- local: each query block sees its own block and one block on either side;
- random: each query block sees ``num_random`` further blocks, drawn once from
  ``seed`` for each number of blocks, so runs are reproducible;
- global: the first ``num_global`` tokens attend to every token and every token
  attends to them.

Keys are gathered per query block, so memory is O(n * (3 + r) * block + n * g):
linear in the sequence length. :meth:`SparseAttention.dense_pattern` returns
the same pattern as an ``(n, n)`` matrix for testing and plotting.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import variants
from variants._blocks import (
    blocked_softmax_attention,
    key_validity,
    masked_fill_disallowed,
    pad_to_multiple,
    scale_keys,
)


@variants.register("sparse")
class SparseAttention(variants.Attention):
    """Local + random + global block-sparse attention (bidirectional)."""

    supports_causal = False

    def __init__(
        self,
        *,
        block_size: int = 64,
        num_global: int = 16,
        num_random: int = 2,
        seed: int = 0,
        **common,
    ) -> None:
        super().__init__(**common)
        variants.check_range("block_size", block_size, low=1)
        variants.check_range("num_global", num_global, low=0)
        variants.check_range("num_random", num_random, low=0)
        self.block_size = block_size
        self.num_global = num_global
        self.num_random = num_random
        self.seed = seed
        self._layouts: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def block_layout(self, num_blocks: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Key-block indices ``(nb, 3 + r)`` per query block, and which slots are real.

        Indices count from 0 for a virtual empty block before the first, so
        neighbours past either end point at empty blocks. Random blocks are
        distinct and never repeat a local one (each key counted once).
        """
        cache_key = (num_blocks, str(device))
        if cache_key not in self._layouts:
            nb = num_blocks
            rows = torch.arange(nb)
            local = torch.stack([rows, rows + 1, rows + 2], dim=1)  # shifted by the virtual empty block
            scores = torch.rand(nb, nb, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + nb))
            near = (rows[:, None] - rows[None, :]).abs() <= 1
            scores = scores.masked_fill(near, -1.0)
            r = min(self.num_random, nb)
            top = scores.topk(r, dim=1) if r > 0 else None
            random_idx = top.indices + 1 if top is not None else torch.empty(nb, 0, dtype=torch.long)
            random_ok = top.values >= 0 if top is not None else torch.empty(nb, 0, dtype=torch.bool)
            slot_ok = torch.cat([torch.ones(nb, 3, dtype=torch.bool), random_ok], dim=1)
            slot_ok[0, 0] = False
            slot_ok[-1, 2] = False
            self._layouts[cache_key] = (torch.cat([local, random_idx], dim=1).to(device), slot_ok.to(device))
        return self._layouts[cache_key]

    def dense_pattern(self, seq: int) -> torch.Tensor:
        """The ``(seq, seq)`` bool matrix of allowed query->key links."""
        b = self.block_size
        nb = -(-seq // b)
        index, slot_ok = self.block_layout(nb, torch.device("cpu"))
        block_allowed = torch.zeros(nb, nb + 2, dtype=torch.bool)
        rows = torch.arange(nb)[:, None].expand_as(index)
        block_allowed[rows[slot_ok], index[slot_ok]] = True
        block_allowed = block_allowed[:, 1:-1]
        allowed = block_allowed.repeat_interleave(b, 0).repeat_interleave(b, 1)[:seq, :seq]
        g = min(self.num_global, seq)
        allowed[:g, :] = True
        allowed[:, :g] = True
        return allowed

    def attend(self, q, k, v, mask):
        batch, heads, seq, dim_head = q.shape
        b, g = self.block_size, min(self.num_global, seq)
        padded = seq + (-seq % b)
        nb = padded // b
        index, slot_ok = self.block_layout(nb, q.device)
        slots = index.shape[1]

        def gather(t: torch.Tensor) -> torch.Tensor:  # (B, H, N, Dh) -> (B, H, nb, slots * b, Dh)
            blocks = F.pad(pad_to_multiple(t, b, dim=2), (0, 0, b, b)).view(batch, heads, nb + 2, b, dim_head)
            return blocks[:, :, index].reshape(batch, heads, nb, slots * b, dim_head)

        valid = key_validity(mask, seq, padded, q.device)  # (B|1, padded)
        valid_blocks = F.pad(valid, (b, b), value=False).view(-1, nb + 2, b)
        allowed = valid_blocks[:, index] & slot_ok[None, :, :, None]  # (B|1, nb, slots, b)
        allowed = allowed.reshape(-1, nb, slots * b)
        k_scaled = scale_keys(k)  # blocked_softmax_attention expects pre-scaled keys
        k_windows, v_windows = gather(k_scaled), gather(v)
        if g > 0:
            # Global keys are appended once per block; the same positions inside gathered blocks are masked.
            position = F.pad(torch.arange(padded, device=q.device), (b, b), value=padded).view(nb + 2, b)
            allowed = allowed & (position[index] >= g).reshape(1, nb, slots * b)
            expand = (batch, heads, nb, g, dim_head)
            k_windows = torch.cat([k_windows, k_scaled[:, :, None, :g].expand(expand)], dim=3)
            v_windows = torch.cat([v_windows, v[:, :, None, :g].expand(expand)], dim=3)
            allowed = torch.cat([allowed, valid[:, None, :g].expand(allowed.shape[0], nb, g)], dim=2)
        q_blocks = pad_to_multiple(q, b, dim=2).view(batch, heads, nb, b, dim_head)
        out = blocked_softmax_attention(
            q_blocks,
            k_windows,
            v_windows,
            mask_scores=masked_fill_disallowed(allowed[:, None, :, None, :]),
            dropout_p=self.dropout_p,
        ).reshape(batch, heads, padded, dim_head)[:, :, :seq]
        if g == 0:
            return out
        # Global queries see every key: O(g * n).
        key_mask = None if mask is None else mask[:, None, None, :]
        global_out = F.scaled_dot_product_attention(q[:, :, :g], k, v, attn_mask=key_mask, dropout_p=self.dropout_p)
        return torch.cat([global_out, out[:, :, g:]], dim=2)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, block_size={self.block_size}, num_global={self.num_global}, "
            f"num_random={self.num_random}, seed={self.seed}"
        )
