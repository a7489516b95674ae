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

import time
from typing import Any

import torch

from runners.measure.speed_probe import build_model
from runners.measure.timing import synchronize, time_calls


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
) -> dict[str, Any]:
    """Tokens/s of one decoding step at ``context``, the state's bytes and the prompt's time; raises on failure.

    ``budget_s`` caps the timed steps on a slow machine (at least 3; ``decode_repeats`` says how many).
    """
    # a variant that cannot decode is refused by the model's prefill, naming those that can
    device = torch.device(device)
    torch.manual_seed(seed)
    model = build_model(
        model_cfg=model_cfg,
        attention=attention,
        vocab_size=vocab_size,
        seq_len=context + warmup + repeats + 1,
        causal=True,
    )
    model = model.to(device).eval()
    prompt = torch.randint(0, vocab_size, (batch_size, context), device=device)
    with torch.no_grad():
        synchronize(device)
        started = time.perf_counter()
        logits, state = model.prefill(prompt)
        synchronize(device)
        prefill_s = time.perf_counter() - started
        state_bytes = state.nbytes()
        carried = {"state": state, "token": logits[:, -1].argmax(dim=-1)}

        def step() -> None:
            logits, carried["state"] = model.step(carried["token"], carried["state"])
            carried["token"] = logits.argmax(dim=-1)

        timing = time_calls(step, device=device, warmup=warmup, repeats=repeats, budget_s=budget_s)
    return {
        "decode_ms": timing.median_s * 1e3,
        "decode_tokens_per_s": batch_size / timing.median_s,
        "decode_spread": timing.spread,
        "state_bytes": state_bytes,
        "state_bytes_per_layer": state_bytes / len(state.layers),
        "prefill_ms": prefill_s * 1e3,
        "decode_repeats": timing.repeats,
        "threads": torch.get_num_threads(),
    }


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
