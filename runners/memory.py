"""Peak memory of one step, measured rather than estimated.

CUDA: the caching allocator's peak statistics (``max_memory_allocated``) over
the step, minus what was allocated before it.

CPU: the kernel's resident-set high-water mark. Linux lets a process reset
its peak RSS (``echo 5 > /proc/self/clear_refs``), so we release freed heap
pages (``malloc_trim``), reset the mark, note the resident size, run the step
and read ``VmHWM``: the difference is the step's peak, everything included
(activations saved for backward, gradients, temporaries, allocator slack).
Before measuring we pin glibc's mmap and trim thresholds (``mallopt``) so that
every tensor of 64 KiB or more is mapped and unmapped eagerly and RSS follows
the live tensors rather than allocator slack. Do any timing *before* the
first measurement: eager unmapping costs page faults that the default
allocator avoids.
"""

from __future__ import annotations

import ctypes
import re
import statistics
from collections.abc import Callable
from pathlib import Path

import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_PINNED_BYTES = 65536

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), flags=re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{field} not found in {_STATUS}")
    return int(match.group(1))


def cpu_peak_supported() -> bool:
    """True where the resident peak can be reset (Linux >= 4.0 with /proc)."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: the measurement still works, with more allocator slack
        return None


def _prepare_heap() -> None:
    """Pin the malloc thresholds (fixed, non-adaptive) and hand free heap pages back."""
    libc = _libc()
    if libc is None:
        return
    libc.mallopt(_M_MMAP_THRESHOLD, _PINNED_BYTES)
    libc.mallopt(_M_TRIM_THRESHOLD, _PINNED_BYTES)
    libc.malloc_trim(0)


def cpu_step_peak_mib(step: Callable[[], object]) -> float:
    """Peak resident memory (MiB) that ``step()`` adds on top of what was live before it."""
    if not cpu_peak_supported():
        raise RuntimeError("CPU peak memory needs Linux /proc/self/clear_refs (resetting VmHWM)")
    _prepare_heap()
    step()  # one step under the pinned thresholds, so the heap holds no slack from earlier steps
    _prepare_heap()
    _CLEAR_REFS.write_text("5")
    before = _status_kib("VmRSS")
    step()
    return (_status_kib("VmHWM") - before) / 1024


def cuda_step_peak_mib(step: Callable[[], object], device: torch.device) -> float:
    """Peak allocated CUDA memory (MiB) that ``step()`` adds over what was allocated before it."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def step_peak_mib(step: Callable[[], object], device: torch.device, *, repeats: int = 1) -> float:
    """Peak memory of one step on ``device``, by the method that device allows.

    With ``repeats > 1`` the median over that many steps: on CPU the order in
    which Python frees a step's tensors varies a little between steps (we saw
    +-4%, one activation-sized tensor), and the median removes that noise.
    """
    measure = (lambda: cuda_step_peak_mib(step, device)) if device.type == "cuda" else (lambda: cpu_step_peak_mib(step))
    return statistics.median(measure() for _ in range(repeats))
