"""Block-sparse attention in the BigBird style (Zaheer et al. 2020).

Three kinds of links, all at block granularity except the globals:
- local: each query block sees its own block and one block on either side;
- random: each query block sees ``num_random`` further blocks, drawn once from
  ``seed`` for each number of blocks, so runs are reproducible;
- global: the first ``num_global`` tokens attend to every token and every token
  attends to them.

Time is O(n * (3 + r) * block + n * g), linear in the sequence length; memory
is O(n) through the blocked kernel of :mod:`variants._blocks`, which gathers
key windows one chunk at a time and recomputes scores in the backward pass.
:meth:`SparseAttention.dense_pattern` returns the same pattern as an ``(n, n)`` matrix for testing and plotting.
"""

from __future__ import annotations

import torch

import variants
from variants._blocks import BlockLayout, blocked_attention, key_validity


@variants.register("sparse")
class SparseAttention(variants.Attention):
    """Local + random + global block-sparse attention (bidirectional)."""

    family = "sparse"
    supports_causal = False
    budget = ("num_random", (0, 1, 2, 4, 8))

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

    def layout(self, seq: int, mask: torch.Tensor | None, device: torch.device) -> BlockLayout:
        """The blocked kernel's view of the pattern: slots from :meth:`block_layout`, global tokens both ways."""
        b, g = self.block_size, min(self.num_global, seq)
        padded = seq + (-seq % b)
        nb = padded // b
        index, slot_ok = self.block_layout(nb, device)
        real_keys = key_validity(mask, seq, padded, device)
        return BlockLayout(
            block=b,
            index=(index - 1).clamp(0, nb - 1),  # block_layout counts a virtual empty block first
            slot_ok=slot_ok,
            key_ok=real_keys,
            num_global=g,
            global_ok=None if mask is None else mask[:, :g],
            real_keys=real_keys,
        )

    def attend(self, q, k, v, mask):
        return blocked_attention(q, k, v, self.layout(q.shape[2], mask, q.device), dropout_p=self.dropout_p)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, block_size={self.block_size}, num_global={self.num_global}, "
            f"num_random={self.num_random}, seed={self.seed}"
        )
