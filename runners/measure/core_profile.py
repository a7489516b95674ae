"""Where one attention core's step spends its time: torch.profiler's top operators and the achieved GFLOP/s.

``runners.bench --profile`` calls :func:`profile_core` in a process of its own
for each case and length. A core that is slower than its FLOP count says is
either waiting on memory (elementwise work, copies, ``exp``) or on Python
(many small calls); the operator table tells which, so the next optimisation is
chosen from data. Achieved GFLOP/s counts matmul FLOPs only
(:func:`runners.measure.flops.count_flops`) over the unprofiled step time, and
is set against the machine's measured matmul peak by the caller.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from runners.measure.core_probe import core_steps, prepare_core
from runners.measure.flops import count_flops
from runners.measure.timing import synchronize, time_calls


def _operator_rows(profiler: profile, *, steps: int, top: int, on_cuda: bool) -> list[dict[str, Any]]:
    """The ``top`` operators by self time per step, with calls per step and their matmul GFLOP where counted."""
    key = "self_device_time_total" if on_cuda else "self_cpu_time_total"
    events = sorted(profiler.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events) or 1.0
    rows = []
    for event in events[:top]:
        self_us = getattr(event, key)
        rows.append(
            {
                "operator": event.key,
                "self_ms": self_us / steps / 1e3,
                "share": self_us / total,
                "calls": event.count / steps,
                "gflop": (event.flops or 0) / steps / 1e9,
            }
        )
    return rows


def profile_core(
    *,
    variant: str,
    impl: str,
    causal: bool,
    hparams: dict[str, Any],
    seq_len: int,
    batch: int,
    heads: int,
    dim_head: int,
    device: str = "cpu",
    dtype: str = "fp32",
    steps: int = 3,
    top: int = 12,
) -> dict[str, Any]:
    """One forward+backward step of a core: median time unprofiled, matmul FLOPs, and its top operators."""
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
    _, step = core_steps(module, call, q, k, v, grad_out)
    step_s = time_calls(step, device=device_, warmup=1, repeats=steps).median_s  # unprofiled
    on_cuda = device_.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with profile(activities=activities, with_flops=True) as profiler:
        for _ in range(steps):
            step()
        synchronize(device_)
    flops = count_flops(step)
    return {
        "fwd_bwd_ms": step_s * 1e3,
        "fwd_bwd_flops": flops,
        "gflops_per_s": flops / step_s / 1e9,
        "operators": _operator_rows(profiler, steps=steps, top=top, on_cuda=on_cuda),
    }


def format_profile(label: str, seq_len: int, result: dict[str, Any], peak_gflops: float | None) -> str:
    """A profile as text: the step's figures in one line, then its operator table."""
    share = f" = {result['gflops_per_s'] / peak_gflops:.0%} of the measured matmul peak" if peak_gflops else ""
    lines = [
        f"{label} n={seq_len}: {result['fwd_bwd_ms']:.1f} ms per forward+backward, "
        f"{result['fwd_bwd_flops'] / 1e9:.2f} matmul GFLOP, {result['gflops_per_s']:.1f} GFLOP/s{share}",
        f"  {'operator':<48} {'self ms':>8} {'share':>6} {'calls':>7} {'GFLOP':>7}",
    ]
    for row in result["operators"]:
        gflop = f"{row['gflop']:.2f}" if row["gflop"] else ""
        lines.append(
            f"  {row['operator'][:48]:<48} {row['self_ms']:>8.2f} {row['share']:>6.0%} {row['calls']:>7.0f} {gflop:>7}"
        )
    return "\n".join(lines)
