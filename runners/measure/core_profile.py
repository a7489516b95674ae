"""Where one attention core's step spends its time: torch.profiler's top operators and the achieved GFLOP/s.

``runners.bench --profile`` calls :func:`profile_core` in a process of its own
for each case and length. A core that is slower than its FLOP count says is
either waiting on memory (elementwise work, copies, ``exp``) or on Python
(many small calls); the operator table tells which, so the next optimisation is
chosen from data. Achieved GFLOP/s counts matmul FLOPs only
(:func:`runners.measure.flops.count_flops`) over the unprofiled step time, and
is set against the machine's measured matmul peak by the caller.

The profiler perturbs what it measures: on the 2-core VMs, a causal Based core
took 116-160 ms per step profiled against 52-72 ms unprofiled, with ~20,000
minor page faults per step against a few hundred, all charged to the operators
that first write fresh buffers (``copy_`` showed 29% of the step; unprofiled,
the whole feature build is ~10%). So the profile also reports the profiled
step's time and page faults beside the unprofiled ones, and the text warns when
they differ, rather than letting an operator table mislead.
"""

from __future__ import annotations

import time
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


CAUTION_TIME = 1.25  # a profiled step this much slower than the unprofiled one gets a caution line ...
CAUTION_FAULTS = 1000  # ... as does one with this many more page faults per step


def minor_page_faults() -> int | None:
    """Minor page faults of this process so far: the first touches of fresh memory (None where not counted)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _faults_per_step(before: int | None, after: int | None, steps: int) -> float | None:
    return None if before is None or after is None else (after - before) / steps


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
    """One forward+backward step of a core: median time unprofiled, matmul FLOPs, and its top operators, with the
    profiled steps' time and page faults beside the unprofiled ones (the profiler's own cost, see the module)."""
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
    step()  # warm-up, outside the fault count: its first allocations are not a step's
    synchronize(device_)
    before = minor_page_faults()
    timing = time_calls(step, device=device_, warmup=0, repeats=steps)  # unprofiled
    step_s, faults = timing.median_s, _faults_per_step(before, minor_page_faults(), timing.repeats)
    on_cuda = device_.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with profile(activities=activities, with_flops=True) as profiler:
        before, start = minor_page_faults(), time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device_)
        profiled_s, profiled_faults = (time.perf_counter() - start) / steps, minor_page_faults()
    flops = count_flops(step)
    return {
        "fwd_bwd_ms": step_s * 1e3,
        "fwd_bwd_flops": flops,
        "gflops_per_s": flops / step_s / 1e9,
        "operators": _operator_rows(profiler, steps=steps, top=top, on_cuda=on_cuda),
        "profiled_ms": profiled_s * 1e3,
        "page_faults_per_step": faults,
        "profiled_page_faults_per_step": _faults_per_step(before, profiled_faults, steps),
    }


def profiler_caution(result: dict[str, Any]) -> str | None:
    """A line saying how far the profiled steps strayed from the unprofiled ones, where they did (else None)."""
    faults, profiled_faults = result.get("page_faults_per_step"), result.get("profiled_page_faults_per_step")
    faulted = faults is not None and profiled_faults is not None and profiled_faults - faults > CAUTION_FAULTS
    if not faulted and result["profiled_ms"] <= CAUTION_TIME * result["fwd_bwd_ms"]:
        return None
    took = f"{result['profiled_ms']:.1f} ms ({result['fwd_bwd_ms']:.1f} ms unprofiled)"
    line = f"  caution: profiled, the step took {took}"
    if faulted:
        return (
            f"{line} with {profiled_faults:,.0f} page faults per step ({faults:,.0f} unprofiled): the operators "
            "that first write fresh buffers (copy_, fill_, cat, a matmul's output) carry the faults' time, so read "
            "their shares as upper bounds"
        )
    return f"{line}: the profiler's cost per recorded call weighs most on operators called many times"


def format_profile(label: str, seq_len: int, result: dict[str, Any], peak_gflops: float | None) -> str:
    """A profile as text: the step's figures in one line, then its operator table."""
    share = f" = {result['gflops_per_s'] / peak_gflops:.0%} of the measured matmul peak" if peak_gflops else ""
    lines = [
        f"{label} n={seq_len}: {result['fwd_bwd_ms']:.1f} ms per forward+backward, "
        f"{result['fwd_bwd_flops'] / 1e9:.2f} matmul GFLOP, {result['gflops_per_s']:.1f} GFLOP/s{share}",
    ]
    caution = profiler_caution(result)
    lines += [caution] if caution else []
    lines.append(f"  {'operator':<48} {'self ms':>8} {'share':>6} {'calls':>7} {'GFLOP':>7}")
    for row in result["operators"]:
        gflop = f"{row['gflop']:.2f}" if row["gflop"] else ""
        lines.append(
            f"  {row['operator'][:48]:<48} {row['self_ms']:>8.2f} {row['share']:>6.0%} {row['calls']:>7.0f} {gflop:>7}"
        )
    return "\n".join(lines)
