"""The decoder's half of the encoder-decoder skeleton: cross-attention over the encoder's output.

A decoder block is the Transformer's: masked (causal) self-attention, then
attention from the decoder's tokens over the encoder's output, then the
feed-forward block, each pre-LN with a residual. The cross-attention core is
any variant with ``supports_cross`` (``variants.build(..., cross=True)``).
Generating, the encoder runs once; each layer keeps its cross state (the
source's keys and values, or the core's constant summary of them), built once
per source, beside its self-attention state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from einops import rearrange
from torch import nn

import variants


def cross_config(attention: Mapping[str, Any], cross_attention: Mapping[str, Any] | None) -> dict[str, Any]:
    """The cross-attention variant: as given, else the self-attention variant where it can cross, else ``full``."""
    if cross_attention is not None:
        chosen = dict(cross_attention)
        if "name" not in chosen:
            raise ValueError(f"cross_attention config needs a 'name' (one of {variants.cross_names()}); got {chosen}")
        return chosen
    if variants.get(attention["name"]).supports_cross:
        return dict(attention)
    return {"name": "full"}


def encoder_layers(model_cfg: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """The skeleton's config without ``encoder_layers``, and the encoder's depth: the decoder's unless it says."""
    model = dict(model_cfg)
    return model, model.pop("encoder_layers", None) or model["layers"]


class CrossAttention(nn.Module):
    """Queries from the decoder, keys and values from the encoder's output, around a cross-capable core."""

    def __init__(self, *, dim: int, heads: int, dim_head: int, core: variants.Attention, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(dim, 2 * heads * dim_head, bias=False)
        self.core = core
        self.to_out = nn.Linear(heads * dim_head, dim)
        self.dropout = nn.Dropout(dropout)

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(self.to_q(x), "b n (h d) -> b h n d", h=self.heads)

    def keys_values(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(rearrange(self.to_kv(memory), "b m (two h d) -> two b h m d", two=2, h=self.heads))

    def output(self, out: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.to_out(rearrange(out, "b h n d -> b n (h d)")))

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.core(self.queries(x), *self.keys_values(memory), memory_mask))

    def state(self, memory: torch.Tensor, memory_mask: torch.Tensor | None) -> variants.State:
        """The source as this layer keeps it while generating (built once)."""
        return self.core.cross_state(*self.keys_values(memory), memory_mask)

    def step(self, x: torch.Tensor, state: variants.State) -> torch.Tensor:
        return self.output(self.core.cross_step(self.queries(x), state))


class DecoderBlock(nn.Module):
    """Pre-LN: ``x + self_attn(ln(x))``, ``x + cross_attn(ln(x), memory)``, ``x + ff(ln(x))``."""

    def __init__(self, *, self_block: nn.Module, cross: CrossAttention, dim: int) -> None:
        super().__init__()
        self.self_block = self_block  # a models.transformer.Block: self-attention and the feed-forward part
        self.cross_norm = nn.LayerNorm(dim)
        self.cross = cross

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, memory: torch.Tensor, memory_mask: torch.Tensor | None
    ) -> torch.Tensor:
        block = self.self_block
        x = x + block.attn(block.attn_norm(x), mask)
        x = x + self.cross(self.cross_norm(x), memory, memory_mask)
        return x + block.ff(block.ff_norm(x))

    def prefill(self, x: torch.Tensor, cross_state: variants.State) -> tuple[torch.Tensor, variants.State]:
        block = self.self_block
        attended, state = block.attn.prefill(block.attn_norm(x))
        x = x + attended
        x = x + self.cross.step(self.cross_norm(x), cross_state)
        return x + block.ff(block.ff_norm(x)), state

    def step(
        self, x: torch.Tensor, state: variants.State, cross_state: variants.State
    ) -> tuple[torch.Tensor, variants.State]:
        block = self.self_block
        attended, state = block.attn.step(block.attn_norm(x), state)
        x = x + attended
        x = x + self.cross.step(self.cross_norm(x), cross_state)
        return x + block.ff(block.ff_norm(x)), state
