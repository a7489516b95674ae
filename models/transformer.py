"""One Transformer skeleton for every variant: only the attention core differs.

Pre-LayerNorm blocks (Xiong et al. 2020) around a registered attention core,
built from plain keyword arguments so a Hydra config maps onto it one to one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from einops import rearrange
from torch import nn

import variants

Positional = Literal["sinusoidal", "learned", "none"]
Head = Literal["classify", "token"]


def sinusoidal_table(length: int, dim: int) -> torch.Tensor:
    """The fixed ``(length, dim)`` encoding of "Attention Is All You Need", section 3.5."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)[:, : dim // 2]
    return table


class PositionalEncoding(nn.Module):
    """Adds sinusoidal or learned positions to token embeddings (or nothing)."""

    def __init__(self, kind: Positional, *, dim: int, max_seq_len: int) -> None:
        super().__init__()
        if kind not in ("sinusoidal", "learned", "none"):
            raise ValueError(f"positional={kind!r} is unknown; choose sinusoidal, learned or none")
        self.kind = kind
        self.max_seq_len = max_seq_len
        if kind == "sinusoidal":
            self.register_buffer("table", sinusoidal_table(max_seq_len, dim), persistent=False)
        elif kind == "learned":
            self.table = nn.Parameter(torch.randn(max_seq_len, dim) * 0.02)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """``x`` ``(B, N, D)`` at positions ``offset .. offset + N - 1`` (decoding passes its position)."""
        if self.kind == "none":
            return x
        end = offset + x.shape[1]
        if end > self.max_seq_len:
            raise ValueError(f"sequence length {end} exceeds the model's max_seq_len={self.max_seq_len}")
        return x + self.table[offset:end].to(x.dtype)


class MultiHeadAttention(nn.Module):
    """Q/K/V and output projections around a variant's mixing core."""

    def __init__(self, *, dim: int, heads: int, dim_head: int, core: variants.Attention, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.core = core
        self.to_out = nn.Linear(heads * dim_head, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        out = self.core(*self.qkv(x), mask)  # (B, H, N, Dh)
        return self.output(out)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return rearrange(self.to_qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)

    def output(self, out: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.to_out(rearrange(out, "b h n d -> b n (h d)")))

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, variants.State]:
        """Causal outputs of a prompt ``(B, N, D)`` and the core's state after it."""
        out, state = self.core.prefill(*self.qkv(x))
        return self.output(out), state

    def step(self, x: torch.Tensor, state: variants.State) -> tuple[torch.Tensor, variants.State]:
        """One token ``(B, 1, D)`` through the core's stepwise form."""
        out, state = self.core.step(*self.qkv(x), state)
        return self.output(out), state


class FeedForward(nn.Sequential):
    """Position-wise MLP with GELU."""

    def __init__(self, *, dim: int, mult: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(dim, dim * mult),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(dim * mult, dim),
            nn.Dropout(dropout),
        )


class Block(nn.Module):
    """Pre-LN residual block: ``x + attn(ln(x))`` then ``x + ff(ln(x))``."""

    def __init__(self, *, dim: int, heads: int, dim_head: int, ff_mult: int, dropout: float, core: variants.Attention):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim=dim, heads=heads, dim_head=dim_head, core=core, dropout=dropout)
        self.ff_norm = nn.LayerNorm(dim)
        self.ff = FeedForward(dim=dim, mult=ff_mult, dropout=dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), mask)
        return x + self.ff(self.ff_norm(x))

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, variants.State]:
        attended, state = self.attn.prefill(self.attn_norm(x))
        x = x + attended
        return x + self.ff(self.ff_norm(x)), state

    def step(self, x: torch.Tensor, state: variants.State) -> tuple[torch.Tensor, variants.State]:
        attended, state = self.attn.step(self.attn_norm(x), state)
        x = x + attended
        return x + self.ff(self.ff_norm(x)), state


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the sequence axis of ``(B, N, D)`` counting only real tokens."""
    if mask is None:
        return x.mean(dim=1)
    weights = mask.to(x.dtype)[..., None]  # (B, N, 1)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


@dataclass
class DecodingState:
    """What generation carries between tokens: each layer's attention state and the next position."""

    layers: list[variants.State]
    position: int

    def nbytes(self) -> int:
        """Memory of every layer's state, in bytes."""
        from variants._decoding import state_bytes

        return sum(state_bytes(layer) for layer in self.layers)


class Transformer(nn.Module):
    """Token embedding, positions, ``layers`` pre-LN blocks, final norm, and a head.

    ``head="classify"`` pools real tokens (padding excluded) into ``(B, num_outputs)``;
    ``head="token"`` predicts ``(B, N, num_outputs)`` per position.
    ``attention`` is ``{"name": <variant>, **hyperparameters}``.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        num_outputs: int,
        max_seq_len: int,
        attention: Mapping[str, Any],
        dim: int = 64,
        layers: int = 2,
        heads: int = 4,
        dim_head: int | None = None,
        ff_mult: int = 4,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        positional: Positional = "sinusoidal",
        head: Head = "classify",
        causal: bool = False,
    ) -> None:
        super().__init__()
        if head not in ("classify", "token"):
            raise ValueError(f"head={head!r} is unknown; choose classify or token")
        for name, value in {"vocab_size": vocab_size, "num_outputs": num_outputs, "layers": layers}.items():
            variants.check_range(name, value, low=1)
        attention = dict(attention)
        if "name" not in attention:
            raise ValueError(f"attention config needs a 'name' (one of {variants.names()}); got {attention}")
        attn_name = attention.pop("name")
        dim_head = dim_head or dim // heads
        self.head_kind = head
        self.causal = causal
        self.embed = nn.Embedding(vocab_size, dim)
        self.positions = PositionalEncoding(positional, dim=dim, max_seq_len=max_seq_len)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(
                dim=dim,
                heads=heads,
                dim_head=dim_head,
                ff_mult=ff_mult,
                dropout=dropout,
                core=variants.build(
                    attn_name,
                    heads=heads,
                    dim_head=dim_head,
                    max_seq_len=max_seq_len,
                    causal=causal,
                    dropout=attn_dropout,
                    **attention,
                ),
            )
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.to_logits = nn.Linear(dim, num_outputs)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``tokens`` ``(B, N)`` int, ``mask`` ``(B, N)`` bool (True = real) -> logits."""
        x = self.dropout(self.positions(self.embed(tokens)))  # (B, N, D)
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x)
        if self.head_kind == "classify":
            x = masked_mean(x, mask)  # (B, D)
        return self.to_logits(x)

    def prefill(self, tokens: torch.Tensor) -> tuple[torch.Tensor, DecodingState]:
        """Logits ``(B, N, V)`` of a prompt (no padding) and the state to generate from.

        Each layer's core runs its parallel causal form and hands over its
        decoding state (a KV cache, a window, a constant summary).
        """
        self._check_decoding()
        x = self.dropout(self.positions(self.embed(tokens)))
        layers = []
        for block in self.blocks:
            x, state = block.prefill(x)
            layers.append(state)
        return self.to_logits(self.norm(x)), DecodingState(layers, tokens.shape[1])

    def step(self, tokens: torch.Tensor, state: DecodingState) -> tuple[torch.Tensor, DecodingState]:
        """Logits ``(B, V)`` of one new token per sequence ``(B,)``, and the state after it."""
        self._check_decoding()
        x = self.dropout(self.positions(self.embed(tokens[:, None]), offset=state.position))
        layers = []
        for block, layer_state in zip(self.blocks, state.layers, strict=True):
            x, layer_state = block.step(x, layer_state)
            layers.append(layer_state)
        return self.to_logits(self.norm(x))[:, 0], DecodingState(layers, state.position + 1)

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
        """Greedy continuation ``(B, N + new_tokens)`` of ``prompt`` ``(B, N)``, one token per step."""
        logits, state = self.prefill(prompt)
        tokens = [prompt]
        next_token = logits[:, -1].argmax(dim=-1)
        for _ in range(new_tokens):
            tokens.append(next_token[:, None])
            logits, state = self.step(next_token, state)
            next_token = logits.argmax(dim=-1)
        return torch.cat(tokens, dim=1)

    def _check_decoding(self) -> None:
        if not self.causal or self.head_kind != "token":
            raise ValueError(
                "decoding needs a causal model with per-token logits: build it with causal=True, head='token'"
            )
