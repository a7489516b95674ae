"""Speed probe of the whole skeleton: throughput, peak memory, FLOPs and parameters.

Measures one variant at one sequence length on one device: tokens/s of a full
optimizer step (forward, backward, AdamW) and of a forward pass, each the
median of repeated timed steps after warm-up (synchronized on GPU), the peak
memory of one training step and the FLOPs of one step from torch's FLOP
counter. Peak memory is what a training step needs in total, as CUDA's
``max_memory_allocated`` counts it: the state it keeps (parameters, gradients,
AdamW moments, the batch) plus the most the step adds on top, measured
(:mod:`runners.measure.memory`); both parts are recorded too, and the process's
high-water mark (CPU: resident set incl. interpreter; CUDA: allocator reserve).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

import models
from runners.measure.flops import count_flops
from runners.measure.memory import measure_step_peak, tensor_mib
from runners.measure.timing import time_calls


def build_model(
    *, model_cfg: dict[str, Any], attention: dict[str, Any], vocab_size: int, seq_len: int, causal: bool
) -> models.Transformer:
    """The skeleton as the probe and the trainer build it (per-token head)."""
    return models.Transformer(
        vocab_size=vocab_size,
        num_outputs=vocab_size,
        max_seq_len=seq_len,
        attention=attention,
        head="token",
        causal=causal,
        **model_cfg,
    )


def speed_probe(
    *,
    model_cfg: dict[str, Any],
    attention: dict[str, Any],
    seq_len: int,
    batch_size: int,
    causal: bool,
    device: str | torch.device,
    precision: str = "32-true",
    vocab_size: int = 128,
    warmup: int = 2,
    repeats: int = 5,
    seed: int = 0,
    budget_s: float = 30.0,
    parts: Sequence[str] = ("time", "flops", "memory"),
) -> dict[str, Any]:
    """Throughput, memory and FLOPs of one configuration; raises on failure (the sweep records it).

    ``budget_s`` caps the timed steps of a slow point, training and inference each (at least 3 are
    taken; ``timed_repeats`` says how many were).

    The sweep calls it through :func:`runners.measure.worker.measure_isolated`, one worker process per part.
    """
    device = torch.device(device)
    torch.manual_seed(seed)
    model = build_model(
        model_cfg=model_cfg, attention=attention, vocab_size=vocab_size, seq_len=seq_len, causal=causal
    ).to(device)
    tokens = torch.randint(0, vocab_size, (batch_size, seq_len), device=device)
    targets = torch.randint(0, vocab_size, (batch_size, seq_len), device=device)
    return measure_model(
        model,
        lambda: model(tokens),
        inputs=[tokens],
        targets=targets,
        device=device,
        precision=precision,
        warmup=warmup,
        repeats=repeats,
        budget_s=budget_s,
        parts=parts,
    )


def measure_model(
    model: torch.nn.Module,
    forward: Callable[[], torch.Tensor],
    *,
    inputs: Sequence[torch.Tensor],
    targets: torch.Tensor,
    device: torch.device,
    precision: str,
    warmup: int,
    repeats: int,
    budget_s: float,
    parts: Sequence[str],
) -> dict[str, Any]:
    """Throughput, memory and FLOPs of training ``model`` on a fixed batch: ``forward()`` gives its logits.

    Tokens per step are those of ``inputs`` (an encoder-decoder reads its source and its target), so tokens/s
    counts every token the step processes. Shared by the self-attention and the cross-attention probes.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast_dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)

    def logits() -> torch.Tensor:
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            return forward()

    def train_step() -> None:
        loss = F.cross_entropy(logits().flatten(0, 1).float(), targets.flatten())
        if not torch.isfinite(loss):
            raise FloatingPointError("loss is NaN/inf")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def inference() -> None:
        with torch.inference_mode():
            logits()

    result: dict[str, Any] = {"params": sum(p.numel() for p in model.parameters())}
    if "time" in parts:
        model.train()
        train = time_calls(train_step, device=device, warmup=warmup, repeats=repeats, budget_s=budget_s)
        model.eval()
        infer = time_calls(inference, device=device, warmup=warmup, repeats=repeats, budget_s=budget_s)
        model.train()
        tokens_per_step = sum(tensor.numel() for tensor in inputs)
        result |= {
            "train_tokens_per_s": tokens_per_step / train.median_s,
            "train_tokens_per_s_min": tokens_per_step / train.max_s,
            "train_tokens_per_s_max": tokens_per_step / train.min_s,
            "train_step_spread": train.spread,
            "infer_tokens_per_s": tokens_per_step / infer.median_s,
            "infer_tokens_per_s_min": tokens_per_step / infer.max_s,
            "infer_tokens_per_s_max": tokens_per_step / infer.min_s,
            "infer_spread": infer.spread,
            "timed_repeats": train.repeats,
        }
    if "flops" in parts:  # the same on every round of a point: counted once (with the fused CPU attention kernel)
        model.train()
        result["flops_per_step"] = count_flops(train_step)
    if "memory" in parts:
        model.train()
        started = time.perf_counter()
        train_step()  # creates the gradients and AdamW moments that the state counts
        repeats_memory = 3 if time.perf_counter() - started < 5 else 1  # the median of 3 where affordable
        state = tensor_mib(model, optimizer, *inputs, targets)  # parameters, gradients, AdamW moments, batch
        peak = measure_step_peak(train_step, device, repeats=repeats_memory)
        result |= {
            "peak_memory_mib": state + peak.added_mib,
            "state_memory_mib": state,
            "step_memory_mib": peak.added_mib,
            "process_peak_mib": peak.process_mib,
        }
    return result
