"""Decode probe of the whole skeleton: the time of one new token after a prompt of n tokens, and the state kept.

Builds the causal skeleton with a per-token head, runs the prompt through its
parallel form (``Transformer.prefill``), then times single-token steps
(``Transformer.step``) that carry every layer's state: median of repeated
steps after warm-up, synchronized on GPU. Each step appends one token, so the
context grows from n to n + warm-up + repeats: negligible next to n.
``state_bytes`` is what the layers hold after the prompt (a KV cache grows
with n; a window stops growing; a linear-attention summary never does).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from models import Transformer
from models.transformer import DecodingState
from runners.measure.speed_probe import build_model
from runners.measure.timing import synchronize, time_alternating, time_calls, timing_of


def decode_probe(
    *,
    model_cfg: dict[str, Any],
    attention: dict[str, Any],
    context: int,
    batch_size: int,
    device: str | torch.device,
    warmup: int = 4,
    repeats: int = 32,
    vocab_size: int = 128,
    seed: int = 0,
    budget_s: float = 20.0,
    paired_attention: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Tokens/s of one decoding step at ``context``, the state's bytes and the prompt's time; raises on failure.

    ``budget_s`` caps the timed steps on a slow machine (at least 3; ``decode_repeats`` says how many).
    ``paired_attention``: the reference's attention, decoded token by token in turn with this one.
    """
    # a variant that cannot decode is refused by the model's prefill, naming those that can
    device = torch.device(device)

    def seeded(with_attention: dict[str, Any]) -> Transformer:
        torch.manual_seed(seed)
        built = build_model(
            model_cfg=model_cfg,
            attention=with_attention,
            vocab_size=vocab_size,
            seq_len=context + warmup + repeats + 1,
            causal=True,
        )
        return built.to(device).eval()

    model = seeded(attention)
    prompt = torch.randint(0, vocab_size, (batch_size, context), device=device)
    twin = None
    if paired_attention is not None:
        reference = seeded(paired_attention)
        twin = (reference, lambda: reference.prefill(prompt))

    def after_prompt(state: DecodingState) -> dict[str, Any]:
        return {"state_bytes": state.nbytes(), "state_bytes_per_layer": state.nbytes() / len(state.layers)}

    timings, _ = time_decoding(
        model,
        lambda: model.prefill(prompt),
        after_prompt,
        batch_size=batch_size,
        device=device,
        warmup=warmup,
        repeats=repeats,
        budget_s=budget_s,
        twin=twin,
    )
    return timings


def time_decoding(
    model: Transformer,
    prefill: Callable[[], tuple[torch.Tensor, DecodingState]],
    after_prompt: Callable[[DecodingState], dict[str, Any]],
    *,
    batch_size: int,
    device: torch.device,
    warmup: int,
    repeats: int,
    budget_s: float,
    twin: tuple[Transformer, Callable[[], tuple[torch.Tensor, DecodingState]]] | None = None,
) -> tuple[dict[str, Any], DecodingState]:
    """The prompt's time (``prefill()``, once), then the median of single greedy tokens through ``model.step``.

    Shared by the decode probes of the skeleton and of the encoder-decoder. ``after_prompt`` reads what the
    record keeps of the state the prompt left (before any timed token); the state after the timed tokens is
    returned beside the record's fields. ``twin``: the reference model and its prompt, decoded token by token
    in turn with this one; ``decode_tokens_per_s_paired_ratio`` is the median per-token ratio to it.
    """
    with torch.no_grad():
        step, carried, prefill_s = start_decoding(model, prefill, device)
        fields = after_prompt(carried["state"])
        if twin is None:
            timing = time_calls(step, device=device, warmup=warmup, repeats=repeats, budget_s=budget_s)
        else:
            twin_step, _, _ = start_decoding(*twin, device)
            mine, theirs = time_alternating(
                [step, twin_step], device=device, warmup=warmup, repeats=repeats, budget_s=budget_s
            )
            timing = timing_of(mine)
            fields["decode_tokens_per_s_paired_ratio"] = statistics.median(
                t / m for m, t in zip(mine, theirs, strict=True)
            )
            fields["reference_decode_tokens_per_s"] = batch_size / statistics.median(theirs)
    return {
        "decode_ms": timing.median_s * 1e3,
        "decode_tokens_per_s": batch_size / timing.median_s,
        "decode_spread": timing.spread,
        **fields,
        "prefill_ms": prefill_s * 1e3,
        "decode_repeats": timing.repeats,
        "threads": torch.get_num_threads(),
    }, carried["state"]


def start_decoding(
    model: Transformer, prefill: Callable[[], tuple[torch.Tensor, DecodingState]], device: torch.device
) -> tuple[Callable[[], None], dict[str, Any], float]:
    """Run the prompt (timed) and return the one-token greedy step, the state it carries, and the prompt's seconds."""
    synchronize(device)
    started = time.perf_counter()
    logits, state = prefill()
    synchronize(device)
    prefill_s = time.perf_counter() - started
    carried = {"state": state, "token": logits[:, -1].argmax(dim=-1)}

    def step() -> None:
        logits, carried["state"] = model.step(carried["token"], carried["state"])
        carried["token"] = logits.argmax(dim=-1)

    return step, carried, prefill_s


def decoding_state_bytes(*, model_cfg: dict[str, Any], attention: dict[str, Any], seq_len: int) -> int:
    """Bytes one sequence's decoding state holds after ``seq_len`` tokens (fp32): a property of the config.

    Beside a training run's accuracy it is the x axis of recall against state size (Zoology, Based): the
    shapes of the state do not depend on the weights, so a fresh model of the same config gives it.
    """
    torch.manual_seed(0)
    model = build_model(model_cfg=model_cfg, attention=attention, vocab_size=8, seq_len=seq_len, causal=True).eval()
    with torch.no_grad():
        _, state = model.prefill(torch.zeros(1, seq_len, dtype=torch.long))
    return int(state.nbytes())
