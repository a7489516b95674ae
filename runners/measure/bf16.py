"""Whether this machine computes in bf16 natively, and the one refusal when it does not.

On a CPU without AVX-512 (or AMX, or Arm's bf16 extension) PyTorch's bf16
matmul falls back to a reference path: one 2048x2048 matmul took 57 s on a
2-core AMD EPYC with AVX2 only, against 0.1 s in fp32 (pytorch issue 146508).
Autocast takes the same path, so ``bf16-mixed`` training there is hundreds of
times slower than ``32-true`` without a word. We ask oneDNN, the library that
runs the CPU matmul, what it can do (it honours ``ONEDNN_MAX_CPU_ISA``, so
``ONEDNN_MAX_CPU_ISA=AVX2`` emulates such a CPU on a faster one); CUDA asks
the device.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import torch

from runners.checks import ConfigError

_SAID: set[str] = set()


class EmulatedBF16Error(ConfigError):
    """bf16 asked of a device that would only emulate it, without the explicit override."""


def bf16_native(device: torch.device | str = "cpu") -> bool:
    """True where bf16 matmuls run in hardware (fast); False where they would be emulated (slow).

    CPU: the same oneDNN check PyTorch makes to route a bf16 matmul to oneDNN
    (``use_mkldnn_bf16_matmul``); where it says no, the matmul takes the reference path.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: its bf16 matmul is the reference path too
        return False


def check_bf16(uses_bf16: bool, device: torch.device | str, *, allow_emulated: bool, fix: str, override: str) -> None:
    """Refuse bf16 on a device without native bf16, before any work, unless ``allow_emulated``.

    ``fix`` is the setting to use instead (``hardware.precision=32-true``), ``override`` the one that
    measures the emulated path anyway; both appear in the one-line message.
    """
    if not uses_bf16 or bf16_native(device):
        return
    what = "this CPU" if torch.device(device).type == "cpu" else "this GPU"
    if allow_emulated:
        line = f"measuring emulated bf16 on {what} ({override}): expect ~500x fp32's time"
        if line not in _SAID:  # once per process, however many runs ask
            _SAID.add(line)
            print(line, file=sys.stderr, flush=True)
        return
    raise EmulatedBF16Error(
        f"bf16 is emulated on {what} (no native bf16 matmul: ~500x slower than fp32); use {fix}, "
        f"or {override} to measure the emulated path anyway"
    )


def check_precision(hardware: Mapping[str, Any]) -> None:
    """Refuse a ``hardware`` config whose bf16 precision this machine would only emulate (see :func:`check_bf16`).

    Reads ``accelerator``, ``precision`` and ``allow_emulated_bf16`` (false where a preset predates it).
    A CUDA config on a machine without CUDA is left alone: its points are recorded as unsupported.
    """
    on_gpu = hardware["accelerator"] in ("gpu", "cuda")
    if on_gpu and not torch.cuda.is_available():
        return
    check_bf16(
        str(hardware["precision"]).startswith("bf16"),
        "cuda" if on_gpu else "cpu",
        allow_emulated=bool(hardware.get("allow_emulated_bf16", False)),
        fix="hardware.precision=16-mixed" if on_gpu else "hardware.precision=32-true",
        override="hardware.allow_emulated_bf16=true",
    )
