"""Speed probe of the whole skeleton: throughput, peak memory, FLOPs and parameters.

Measures one variant at one sequence length on one device: tokens/s of a full
optimizer step (forward, backward, AdamW) and of a forward pass, each the
median of repeated timed steps after warm-up (synchronized on GPU), the peak
memory of one training step and the FLOPs of one step from torch's FLOP
counter. Peak memory is what a training step needs in total, as CUDA's
``max_memory_allocated`` counts it: the state it keeps (parameters, gradients,
AdamW moments, the batch) plus the most the step adds on top, measured
(:mod:`runners.measure.memory`: live tensor bytes on both devices); both parts
are recorded too, and the process's high-water mark (CPU: resident set incl.
interpreter; CUDA: allocator reserve) with, on CPU, the resident set's growth.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

import models
from runners.measure.flops import count_flops
from runners.measure.memory import measure_step_peak, tensor_mib
from runners.measure.timing import time_alternating, time_calls, timing_of


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
    min_time_s: float = 0.0,
    paired_attention: dict[str, Any] | None = None,
    parts: Sequence[str] = ("time", "flops", "memory"),
) -> dict[str, Any]:
    """Throughput, memory and FLOPs of one configuration; raises on failure (the sweep records it).

    ``budget_s`` caps the timed steps of a slow point, training and inference each (at least 3 are
    taken; ``timed_repeats`` says how many were); ``min_time_s`` extends a fast point's timed steps
    until they add up to that long (:func:`runners.measure.timing.time_calls`). ``paired_attention``:
    the reference's attention, whose model is timed step by step in turn with this one (the ratios).

    The sweep calls it through :func:`runners.measure.worker.measure_isolated`, one worker process per part.
    """
    device = torch.device(device)

    def seeded(with_attention: dict[str, Any]) -> models.Transformer:
        torch.manual_seed(seed)
        return build_model(
            model_cfg=model_cfg, attention=with_attention, vocab_size=vocab_size, seq_len=seq_len, causal=causal
        ).to(device)

    model = seeded(attention)
    tokens = torch.randint(0, vocab_size, (batch_size, seq_len), device=device)
    targets = torch.randint(0, vocab_size, (batch_size, seq_len), device=device)
    reference = None
    if paired_attention is not None and "time" in parts:
        twin = seeded(paired_attention)
        reference = (twin, lambda: twin(tokens))
    return measure_model(
        model,
        lambda: model(tokens),
        reference=reference,
        inputs=[tokens],
        targets=targets,
        device=device,
        precision=precision,
        warmup=warmup,
        repeats=repeats,
        budget_s=budget_s,
        min_time_s=min_time_s,
        parts=parts,
    )


class Steps(NamedTuple):
    """What is timed of one model: a training step, a forward pass, and the optimizer (its state is memory)."""

    train: Callable[[], None]
    infer: Callable[[], None]
    optimizer: torch.optim.Optimizer


def training_steps(
    model: torch.nn.Module,
    forward: Callable[[], torch.Tensor],
    *,
    targets: torch.Tensor,
    device: torch.device,
    precision: str,
) -> Steps:
    """A full optimizer step (forward, backward, AdamW) of ``model`` on a fixed batch, and a forward pass."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast_dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)

    def logits() -> torch.Tensor:
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            return forward()

    def train_step() -> None:
        model.train()
        loss = F.cross_entropy(logits().flatten(0, 1).float(), targets.flatten())
        if not torch.isfinite(loss):
            raise FloatingPointError("loss is NaN/inf")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def inference() -> None:
        model.eval()
        with torch.inference_mode():
            logits()

    return Steps(train_step, inference, optimizer)


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
    min_time_s: float = 0.0,
    reference: tuple[torch.nn.Module, Callable[[], torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """Throughput, memory and FLOPs of training ``model`` on a fixed batch: ``forward()`` gives its logits.

    Tokens per step are those of ``inputs`` (an encoder-decoder reads its source and its target), so tokens/s
    counts every token the step processes. Shared by the self-attention and the cross-attention probes.
    ``reference``: the model a comparison is made with (exact attention) and its forward on the same batch;
    its steps are timed alternately with this model's (:func:`runners.measure.timing.time_alternating`) and
    ``*_paired_ratio`` is the median per-cycle ratio of this model's tokens/s to the reference's.
    """
    train_step, inference, optimizer = training_steps(
        model, forward, targets=targets, device=device, precision=precision
    )
    result: dict[str, Any] = {"params": sum(p.numel() for p in model.parameters())}
    if "time" in parts:
        timing = {"device": device, "warmup": warmup, "repeats": repeats, "budget_s": budget_s}
        timing["min_time_s"] = min_time_s
        tokens_per_step = sum(tensor.numel() for tensor in inputs)
        if reference is None:
            timings = {"train": time_calls(train_step, **timing), "infer": time_calls(inference, **timing)}
        else:
            ref_train, ref_infer, _ = training_steps(*reference, targets=targets, device=device, precision=precision)
            timings = {}
            for kind, own, theirs in (("train", train_step, ref_train), ("infer", inference, ref_infer)):
                mine, ref = time_alternating([own, theirs], **timing)
                timings[kind] = timing_of(mine)
                result[f"{kind}_tokens_per_s_paired_ratio"] = statistics.median(
                    r / m for m, r in zip(mine, ref, strict=True)
                )
                result[f"reference_{kind}_tokens_per_s"] = tokens_per_step / statistics.median(ref)
        for kind, measured in timings.items():
            result |= {
                f"{kind}_tokens_per_s": tokens_per_step / measured.median_s,
                f"{kind}_tokens_per_s_min": tokens_per_step / measured.max_s,
                f"{kind}_tokens_per_s_max": tokens_per_step / measured.min_s,
            }
        result |= {
            "train_step_spread": timings["train"].spread,
            "infer_spread": timings["infer"].spread,
            "timed_repeats": timings["train"].repeats,
            "infer_timed_repeats": timings["infer"].repeats,
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
            "memory_method": peak.method,
        }
        if peak.resident_added_mib is not None:  # CPU: the resident set's reading of the same step, slack included
            result["step_resident_mib"] = peak.resident_added_mib
    return result
