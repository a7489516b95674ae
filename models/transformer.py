"""One Transformer skeleton for every variant: only the attention core differs.

Pre-LayerNorm blocks (Xiong et al. 2020) around a registered attention core,
built from plain keyword arguments so a Hydra config maps onto it one to one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from einops import rearrange
from torch import nn

import variants
from models.encoder_decoder import CrossAttention, DecoderBlock, cross_config

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
    cross: list[variants.State] = field(default_factory=list)  # encoder-decoder: each layer's source, built once

    def nbytes(self) -> int:
        """Memory of every layer's self-attention state, in bytes."""
        from variants._decoding import state_bytes

        return sum(state_bytes(layer) for layer in self.layers)

    def cross_nbytes(self) -> int:
        """Memory of every layer's cross state (the source's keys and values, or a summary), in bytes."""
        from variants._decoding import state_bytes

        return sum(state_bytes(layer) for layer in self.cross)


class Transformer(nn.Module):
    """Token embedding, positions, ``layers`` pre-LN blocks, final norm, and a head.

    ``head="classify"`` pools real tokens (padding excluded) into ``(B, num_outputs)``;
    ``head="token"`` predicts ``(B, N, num_outputs)`` per position.
    ``attention`` is ``{"name": <variant>, **hyperparameters}``.

    ``encoder_layers > 0`` makes it an encoder-decoder (causal, per-token head): a bidirectional encoder
    of that many blocks over the source, and ``layers`` decoder blocks, each with causal self-attention
    (``attention``) and cross-attention over the encoder's output (``cross_attention``; default: the same
    variant where it supports cross-attention, else ``full``; the choice is ``self.cross_attention``).
    Source and target share the embedding and the positions.
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
        encoder_layers: int = 0,
        cross_attention: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if head not in ("classify", "token"):
            raise ValueError(f"head={head!r} is unknown; choose classify or token")
        variants.check_range("encoder_layers", encoder_layers, low=0)
        if encoder_layers and (head != "token" or not causal):
            raise ValueError("an encoder-decoder generates its target: build it with causal=True, head='token'")
        if cross_attention is not None and not encoder_layers:
            raise ValueError("cross_attention needs an encoder: set encoder_layers >= 1")
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
        shape = {"heads": heads, "dim_head": dim_head, "max_seq_len": max_seq_len}

        def block(core: variants.Attention) -> Block:
            return Block(dim=dim, heads=heads, dim_head=dim_head, ff_mult=ff_mult, dropout=dropout, core=core)

        def self_core(is_causal: bool) -> variants.Attention:
            return variants.build(attn_name, **shape, causal=is_causal, dropout=attn_dropout, **attention)

        self.blocks = nn.ModuleList(block(self_core(causal)) for _ in range(layers))
        self.cross_attention: dict[str, Any] | None = None
        if encoder_layers:
            self.cross_attention = cross_config({"name": attn_name, **attention}, cross_attention)
            cross = dict(self.cross_attention)
            cross_name = cross.pop("name")
            self.encoder = nn.ModuleList(block(self_core(False)) for _ in range(encoder_layers))
            self.encoder_norm = nn.LayerNorm(dim)
            self.blocks = nn.ModuleList(
                DecoderBlock(
                    self_block=self_block,
                    cross=CrossAttention(
                        dim=dim,
                        heads=heads,
                        dim_head=dim_head,
                        core=variants.build(cross_name, **shape, cross=True, dropout=attn_dropout, **cross),
                        dropout=dropout,
                    ),
                    dim=dim,
                )
                for self_block in self.blocks
            )
        self.norm = nn.LayerNorm(dim)
        self.to_logits = nn.Linear(dim, num_outputs)

    @property
    def is_encoder_decoder(self) -> bool:
        return self.cross_attention is not None

    def encode(self, source: torch.Tensor, source_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's output ``(B, M, D)`` over ``source`` ``(B, M)`` (bidirectional, padding masked)."""
        if not self.is_encoder_decoder:
            raise ValueError("encode needs an encoder-decoder: build the model with encoder_layers >= 1")
        x = self.dropout(self.positions(self.embed(source)))
        for block in self.encoder:
            x = block(x, source_mask)
        return self.encoder_norm(x)

    def _source(self, source: torch.Tensor | None) -> None:
        if self.is_encoder_decoder and source is None:
            raise ValueError("an encoder-decoder needs its source: pass source=(B, M) tokens (and source_mask)")
        if not self.is_encoder_decoder and source is not None:
            raise ValueError("source given to a model without an encoder: build it with encoder_layers >= 1")

    def forward(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor | None = None,
        source: torch.Tensor | None = None,
        source_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``tokens`` ``(B, N)`` int, ``mask`` ``(B, N)`` bool (True = real) -> logits.

        An encoder-decoder also takes its ``source`` ``(B, M)`` and ``source_mask`` (teacher forcing:
        ``tokens`` is the target shifted right).
        """
        self._source(source)
        memory = self.encode(source, source_mask) if source is not None else None
        x = self.dropout(self.positions(self.embed(tokens)))  # (B, N, D)
        for block in self.blocks:
            x = block(x, mask) if memory is None else block(x, mask, memory, source_mask)
        x = self.norm(x)
        if self.head_kind == "classify":
            x = masked_mean(x, mask)  # (B, D)
        return self.to_logits(x)

    def prefill(
        self, tokens: torch.Tensor, source: torch.Tensor | None = None, source_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, DecodingState]:
        """Logits ``(B, N, V)`` of a prompt (no padding) and the state to generate from.

        Each layer's core runs its parallel causal form and hands over its
        decoding state (a KV cache, a window, a constant summary). An
        encoder-decoder encodes ``source`` once here and keeps each layer's
        cross state (``DecodingState.cross``).
        """
        self._check_decoding()
        self._source(source)
        cross = []
        if source is not None:
            memory = self.encode(source, source_mask)
            cross = [block.cross.state(memory, source_mask) for block in self.blocks]
        x = self.dropout(self.positions(self.embed(tokens)))
        layers = []
        for index, block in enumerate(self.blocks):
            x, state = block.prefill(x) if not cross else block.prefill(x, cross[index])
            layers.append(state)
        return self.to_logits(self.norm(x)), DecodingState(layers, tokens.shape[1], cross)

    def step(self, tokens: torch.Tensor, state: DecodingState) -> tuple[torch.Tensor, DecodingState]:
        """Logits ``(B, V)`` of one new token per sequence ``(B,)``, and the state after it."""
        self._check_decoding()
        x = self.dropout(self.positions(self.embed(tokens[:, None]), offset=state.position))
        layers = []
        for index, (block, layer_state) in enumerate(zip(self.blocks, state.layers, strict=True)):
            if state.cross:
                x, layer_state = block.step(x, layer_state, state.cross[index])
            else:
                x, layer_state = block.step(x, layer_state)
            layers.append(layer_state)
        return self.to_logits(self.norm(x))[:, 0], DecodingState(layers, state.position + 1, state.cross)

    @torch.no_grad()
    def generate(
        self,
        prompt: torch.Tensor,
        new_tokens: int,
        source: torch.Tensor | None = None,
        source_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Greedy continuation ``(B, N + new_tokens)`` of ``prompt`` ``(B, N)``, one token per step.

        An encoder-decoder encodes ``source`` once; ``prompt`` is then the target's start (a BOS token).
        """
        logits, state = self.prefill(prompt, source, source_mask)
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
