"""Speed, memory and decoding of the encoder-decoder skeleton, where only the cross-attention is the variant.

CAB (Zhang et al. 2023) compares efficient attention one pattern at a time:
the encoder's and the decoder's self-attention stay one fixed variant
(``self_attention``, exact by default), and the variant measured is the
decoder's attention over the encoder's output (queries of the target's
length N, keys and values of the source's length M). The training probe
times a full optimizer step over a source of M tokens and a target of N
(tokens/s counts both); the decode probe encodes the source once, builds
each layer's cross state (the source's keys and values, or the variant's
summary of them) and times single target tokens, recording the bytes of the
cross state beside those of the self-attention state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

import models
from models.encoder_decoder import encoder_layers
from models.transformer import DecodingState
from runners.measure.decode_probe import time_decoding
from runners.measure.speed_probe import measure_model
from tasks.sort import BOS


def build_encoder_decoder(
    *,
    model_cfg: dict[str, Any],
    self_attention: dict[str, Any],
    cross_attention: dict[str, Any],
    vocab_size: int,
    seq_len: int,
) -> models.Transformer:
    """The encoder-decoder as the trainer builds it: ``layers`` decoder blocks and as many encoder blocks."""
    model, depth = encoder_layers(model_cfg)
    return models.Transformer(
        vocab_size=vocab_size,
        num_outputs=vocab_size,
        max_seq_len=seq_len,
        attention=self_attention,
        head="token",
        causal=True,
        encoder_layers=depth,
        cross_attention=cross_attention,
        **model,
    )


def cross_speed_probe(
    *,
    model_cfg: dict[str, Any],
    self_attention: dict[str, Any],
    attention: dict[str, Any],
    source_len: int,
    target_len: int,
    batch_size: int,
    device: str | torch.device,
    precision: str = "32-true",
    vocab_size: int = 128,
    warmup: int = 2,
    repeats: int = 5,
    seed: int = 0,
    budget_s: float = 30.0,
    min_time_s: float = 0.0,
    paired_attention: dict[str, Any] | None = None,
    parts: Sequence[str] = ("time", "flops", "memory"),
) -> dict[str, Any]:
    """Throughput (source and target tokens/s), peak memory and FLOPs of a teacher-forced training step.

    ``paired_attention``: the reference cross-attention, timed step by step in turn with this one.
    """
    device = torch.device(device)

    def seeded(cross_attention: dict[str, Any]) -> models.Transformer:
        torch.manual_seed(seed)
        return build_encoder_decoder(
            model_cfg=model_cfg,
            self_attention=self_attention,
            cross_attention=cross_attention,
            vocab_size=vocab_size,
            seq_len=max(source_len, target_len),
        ).to(device)

    model = seeded(attention)
    source = torch.randint(0, vocab_size, (batch_size, source_len), device=device)
    decoder_in = torch.randint(0, vocab_size, (batch_size, target_len), device=device)
    targets = torch.randint(0, vocab_size, (batch_size, target_len), device=device)
    reference = None
    if paired_attention is not None and "time" in parts:
        twin = seeded(paired_attention)
        reference = (twin, lambda: twin(decoder_in, None, source))
    return measure_model(
        model,
        lambda: model(decoder_in, None, source),
        reference=reference,
        inputs=[source, decoder_in],
        targets=targets,
        device=device,
        precision=precision,
        warmup=warmup,
        repeats=repeats,
        budget_s=budget_s,
        min_time_s=min_time_s,
        parts=parts,
    )


def cross_decode_probe(
    *,
    model_cfg: dict[str, Any],
    self_attention: dict[str, Any],
    attention: dict[str, Any],
    source_len: int,
    batch_size: int,
    device: str | torch.device,
    warmup: int = 4,
    repeats: int = 32,
    vocab_size: int = 128,
    seed: int = 0,
    budget_s: float = 20.0,
    paired_attention: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Tokens/s of one target token over a source of ``source_len``, and the bytes of both states.

    ``paired_attention``: the reference cross-attention, decoded token by token in turn with this one.
    """
    device = torch.device(device)

    def decoder(cross_attention: dict[str, Any]) -> models.Transformer:
        torch.manual_seed(seed)
        built = build_encoder_decoder(
            model_cfg=model_cfg,
            self_attention=self_attention,
            cross_attention=cross_attention,
            vocab_size=vocab_size,
            seq_len=max(source_len, warmup + repeats + 2),
        )
        return built.to(device).eval()

    model = decoder(attention)
    source = torch.randint(0, vocab_size, (batch_size, source_len), device=device)
    start = torch.full((batch_size, 1), BOS, dtype=torch.long, device=device)
    twin = None
    if paired_attention is not None:
        reference = decoder(paired_attention)
        twin = (reference, lambda: reference.prefill(start, source))

    def after_prompt(state: DecodingState) -> dict[str, Any]:
        cross = state.cross_nbytes()
        return {"cross_state_bytes": cross, "cross_state_bytes_per_layer": cross / len(state.cross)}

    timings, last = time_decoding(
        model,
        lambda: model.prefill(start, source),  # the encoder once, each layer's cross state once
        after_prompt,
        batch_size=batch_size,
        device=device,
        warmup=warmup,
        repeats=repeats,
        budget_s=budget_s,
        twin=twin,
    )
    # the target's self-attention state after the timed tokens; prefill_ms: encoding and the cross states
    return timings | {"state_bytes": last.nbytes()}


def cross_state_bytes(*, model_cfg: dict[str, Any], attention: dict[str, Any], source_len: int) -> int:
    """Bytes of one source's cross state in every decoder layer (fp32): a property of the config.

    The shapes do not depend on the weights, so a fresh model of the same config gives it (beside an accuracy run).
    """
    torch.manual_seed(0)
    model = build_encoder_decoder(
        model_cfg=model_cfg,
        self_attention={"name": "full"},
        cross_attention=attention,
        vocab_size=BOS + 1,
        seq_len=source_len,
    ).eval()
    with torch.no_grad():
        _, state = model.prefill(torch.full((1, 1), BOS), torch.zeros(1, source_len, dtype=torch.long))
    return int(state.cross_nbytes())
