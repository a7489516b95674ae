"""Matmul FLOPs of a step, counted by torch's FLOP counter, including fused kernels it cannot see.

``torch.utils.flop_counter`` has formulas for the CUDA attention kernels but
not for the fused CPU one (``_scaled_dot_product_flash_attention_for_cpu``),
so without help ``full`` would count zero on CPU. We register that kernel
with torch's own SDPA formulas (forward 2 matmuls, backward 5 including the
recomputed scores); causal calls count half, as the kernel skips the blocks
above the diagonal. Elementwise work (softmax, exp) is not counted anywhere:
the figure is matmul FLOPs, which is what the matmul peak is measured in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils import flop_counter

_aten = torch.ops.aten


def _cpu_flash_forward(query, key, value, dropout_p=0.0, is_causal=False, *args, out_shape=None, **kwargs) -> int:
    flops = flop_counter.sdpa_flop_count(query, key, value)
    return flops // 2 if is_causal else flops


def _cpu_flash_backward(
    grad_out, query, key, value, out, logsumexp, dropout_p=0.0, is_causal=False, *args, out_shape=None, **kwargs
) -> int:
    flops = flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)
    return flops // 2 if is_causal else flops


def _custom_mapping() -> dict[Any, Callable[..., int]]:
    mapping = {}
    for name, formula in [
        ("_scaled_dot_product_flash_attention_for_cpu", _cpu_flash_forward),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_flash_backward),
    ]:
        if hasattr(_aten, name):  # present on every CPU build we know of; absent ones are simply not counted
            mapping[getattr(_aten, name)] = formula
    return mapping


def count_flops(step: Callable[[], object]) -> int:
    """Matmul FLOPs that one call of ``step`` executes (forward and backward, recomputation included)."""
    with flop_counter.FlopCounterMode(display=False, custom_mapping=_custom_mapping()) as counter:
        step()
    return counter.get_total_flops()
