"""Time and peak memory of one attention core (no projections), ours or a peer package's.

``runners.bench`` calls :func:`core_probe` through
:func:`runners.measure.worker.measure_isolated`: timing and memory each in a
process of its own, as the sweep's skeleton probe does.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

import variants
from runners.measure.flops import count_flops
from runners.measure.matmul_peak import DTYPES
from runners.measure.memory import measure_step_peak
from runners.measure.peers import PEERS
from runners.measure.timing import time_alternating, time_calls, timing_of

OURS = "ours"


def build_core(
    *, variant: str, impl: str, causal: bool, hparams: dict[str, Any], heads: int, dim_head: int, seq_len: int
) -> tuple[nn.Module, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]]:
    """The module (for its parameters) and the ``(q, k, v) -> out`` call of our variant or its peer."""
    if impl == OURS:
        module = variants.build(variant, heads=heads, dim_head=dim_head, max_seq_len=seq_len, causal=causal, **hparams)
        return module, module
    return PEERS[variant].build(heads=heads, dim_head=dim_head, seq_len=seq_len, causal=causal, hparams=hparams)


def prepare_core(
    *,
    variant: str,
    impl: str,
    causal: bool,
    hparams: dict[str, Any],
    seq_len: int,
    batch: int,
    heads: int,
    dim_head: int,
    device: torch.device,
    dtype: str,
) -> tuple[nn.Module, Callable, tuple[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The seeded core on ``device`` with its call, random q, k, v in ``dtype`` (leaves) and an output gradient."""
    torch.manual_seed(0)
    module, call = build_core(
        variant=variant, impl=impl, causal=causal, hparams=hparams, heads=heads, dim_head=dim_head, seq_len=seq_len
    )
    module.to(device)
    shape = (batch, heads, seq_len, dim_head)
    q, k, v = (torch.randn(shape, device=device).to(DTYPES[dtype]).requires_grad_() for _ in range(3))
    grad_out = torch.randn(shape, device=device).to(DTYPES[dtype])
    return module, call, (q, k, v), grad_out


def core_steps(
    module: nn.Module, call: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad_out: torch.Tensor
) -> tuple[Callable[[], None], Callable[[], None]]:
    """A forward call without a graph, and a forward+backward step that leaves no gradients behind."""

    def forward() -> None:
        with torch.no_grad():
            call(q, k, v)

    def forward_backward() -> None:
        call(q, k, v).backward(grad_out)
        for t in (q, k, v):
            t.grad = None
        module.zero_grad(set_to_none=True)

    return forward, forward_backward


def core_probe(
    *,
    variant: str,
    impl: str,
    causal: bool,
    hparams: dict[str, Any],
    seq_len: int,
    batch: int,
    heads: int,
    dim_head: int,
    repeats: int,
    device: str = "cpu",
    dtype: str = "fp32",
    budget_s: float = 20.0,
    min_time_s: float = 0.0,
    paired_case: dict[str, Any] | None = None,
    parts: Sequence[str] = ("time", "flops", "memory"),
) -> dict[str, Any]:
    """Forward time, forward+backward time (medians), their FLOPs and the peak memory of one step.

    q, k, v come in ``dtype`` (``"fp32"`` or ``"bf16"``); parameters stay fp32,
    as under mixed precision. ``budget_s`` caps the timed calls of a slow point
    (at least 3 are taken). ``fwd_bwd_flops`` counts the matmul FLOPs one
    forward+backward step executes (recomputation included, see
    :func:`runners.measure.flops.count_flops`). ``floor_mib`` is the part of
    ``peak_mib`` no variant can avoid (output and input gradients, which grow
    linearly in n), so ``peak_mib - floor_mib`` is the variant's working memory. ``min_time_s``: timed
    calls go on until they add up to that long. ``paired_case`` (``variant``, ``impl``, ``hparams`` of the
    reference, exact attention): its core is timed call by call in turn with this one on the same q, k, v,
    and ``*_paired_ratio`` is the median per-call ratio of this core's time to the reference's.
    """
    device_ = torch.device(device)
    module, call, (q, k, v), grad_out = prepare_core(
        variant=variant,
        impl=impl,
        causal=causal,
        hparams=hparams,
        seq_len=seq_len,
        batch=batch,
        heads=heads,
        dim_head=dim_head,
        device=device_,
        dtype=dtype,
    )

    forward, forward_backward = core_steps(module, call, q, k, v, grad_out)

    result: dict[str, Any] = {"threads": torch.get_num_threads()}
    timing = {"device": device_, "warmup": 1, "repeats": repeats, "budget_s": budget_s, "min_time_s": min_time_s}
    if "time" in parts and paired_case is not None:
        twin, twin_call = build_core(causal=causal, heads=heads, dim_head=dim_head, seq_len=seq_len, **paired_case)
        twin.to(device_)
        twin_forward, twin_forward_backward = core_steps(twin, twin_call, q, k, v, grad_out)
        timed = {}
        for name, own, theirs in (
            ("fwd_ms", forward, twin_forward),
            ("fwd_bwd_ms", forward_backward, twin_forward_backward),
        ):
            mine, reference = time_alternating([own, theirs], **timing)
            timed[name] = timing_of(mine)
            result[f"{name}_paired_ratio"] = statistics.median(m / r for m, r in zip(mine, reference, strict=True))
        fwd, step = timed["fwd_ms"], timed["fwd_bwd_ms"]
    elif "time" in parts:
        fwd = time_calls(forward, **timing)
        step = time_calls(forward_backward, **timing)
    if "time" in parts:
        result |= {
            "fwd_ms": fwd.median_s * 1e3,
            "fwd_bwd_ms": step.median_s * 1e3,
            "fwd_bwd_spread": step.spread,
            "repeats": step.repeats,
        }
    if "flops" in parts:  # counted once per point, not per round
        result["fwd_bwd_flops"] = count_flops(forward_backward)
        if "fwd_bwd_ms" in result:
            result["fwd_bwd_gflops_per_s"] = result["fwd_bwd_flops"] / result["fwd_bwd_ms"] * 1e3 / 1e9
    if "memory" in parts:
        started = time.perf_counter()
        forward_backward()  # a first step outside the measurement: lazily built state is not the step's
        repeats_memory = 3 if time.perf_counter() - started < 5 else 1  # the median of 3 where affordable
        peak = measure_step_peak(forward_backward, device_, repeats=repeats_memory)
        result |= {"peak_mib": peak.added_mib, "memory_method": peak.method}
        # what any exact-gradient attention must hold at the step's end: the output and the q, k, v gradients
        result["floor_mib"] = 4 * q.numel() * q.element_size() / 2**20
    return result
