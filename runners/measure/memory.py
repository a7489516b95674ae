"""Peak memory of one step, measured rather than estimated.

CUDA: the caching allocator's peak statistics (``max_memory_allocated``) over
the step, minus what was allocated before it.

CPU: the same quantity, counted from the CPU allocator's own reports: under
``torch.profiler(profile_memory=True)`` every allocation and free of a tensor
block is an event with its size, so their running sum over the step, at its
maximum, is the step's peak of live tensor bytes (kernels' internal buffers
included). It repeats to the byte from run to run (kernels, and so their
workspaces, may differ between CPUs), and it is what CUDA reports, so CPU and
GPU ratios mean the same thing.

CPU, also recorded: the kernel's resident-set high-water mark, which adds what
the allocator holds beyond live tensors (glibc slack, varying by a few percent
between processes and by variant). Linux lets a process reset its peak RSS
(``echo 5 > /proc/self/clear_refs``), so we release freed heap pages
(``malloc_trim``), reset the mark, note the resident size, run the step
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
from dataclasses import dataclass
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


LIVE_TENSORS = "live tensors"  # the allocator's live bytes (CUDA: max_memory_allocated; CPU: torch.profiler)
RESIDENT_SET = "resident set"  # CPU's resident-set growth (cpu_step_peak; stored records from before live tensors)


@dataclass(frozen=True)
class StepPeak:
    """One step's peak: what it adds over the memory live before it, and the process-wide high-water mark."""

    added_mib: float  # the step's peak over what was live before it, counted as ``method`` says
    process_mib: float  # CPU: peak resident set of the process (interpreter and libraries included); CUDA: reserved
    method: str  # LIVE_TENSORS or RESIDENT_SET: what ``added_mib`` counts (recorded as ``memory_method``)
    resident_added_mib: float | None = None  # CPU: the resident set's growth over the step (allocator slack included)


def _allocated_bytes_timeline(step: Callable[[], object]) -> list[int]:
    """Signed sizes of the CPU tensor blocks ``step()`` allocates (+) and frees (-), in order."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profiler:
        step()
    events = [
        event
        for event in profiler.profiler.kineto_results.events()  # every allocation, also those inside operators
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
    ]
    return [event.nbytes() for event in sorted(events, key=lambda event: event.start_ns())]


def cpu_live_step_mib(step: Callable[[], object]) -> float:
    """MiB of CPU tensor memory ``step()`` holds at its peak beyond what was live before it.

    The allocator reports a free only for a block it saw allocated while profiling, so a first step runs
    under the profiler unmeasured: every block the measured step frees (last step's gradients, say) was
    allocated under it.
    """
    _allocated_bytes_timeline(step)
    running = peak = 0
    for nbytes in _allocated_bytes_timeline(step):
        running += nbytes
        peak = max(peak, running)
    return peak / 2**20


def cpu_step_peak(step: Callable[[], object]) -> StepPeak:
    """Peak resident memory that ``step()`` adds on top of what was live before it, and the process's peak."""
    if not cpu_peak_supported():
        raise RuntimeError("CPU peak memory needs Linux /proc/self/clear_refs (resetting VmHWM)")
    _prepare_heap()
    step()  # one step under the pinned thresholds, so the heap holds no slack from earlier steps
    _prepare_heap()
    _CLEAR_REFS.write_text("5")
    before = _status_kib("VmRSS")
    step()
    high_water = _status_kib("VmHWM")
    return StepPeak(added_mib=(high_water - before) / 1024, process_mib=high_water / 1024, method=RESIDENT_SET)


def cuda_step_peak(step: Callable[[], object], device: torch.device) -> StepPeak:
    """Peak allocated CUDA memory that ``step()`` adds over what was allocated before it, and the reserved peak."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return StepPeak(
        added_mib=(torch.cuda.max_memory_allocated(device) - before) / 2**20,
        process_mib=torch.cuda.max_memory_reserved(device) / 2**20,
        method=LIVE_TENSORS,
    )


def tensor_mib(*holders: object) -> float:
    """MiB of the distinct tensor storages reachable from ``holders``.

    Holders may be tensors, modules (parameters, their gradients, buffers),
    optimizers (their state) or containers of these. A training step's peak is
    this resident state plus what the step adds on top, which is what CUDA's
    ``max_memory_allocated`` reports; on CPU the resident size also holds the
    interpreter and libraries, so the state is counted from the tensors.
    """
    seen: dict[int, int] = {}

    def visit(obj: object) -> None:
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
            if obj.grad is not None:
                visit(obj.grad)
        elif isinstance(obj, torch.nn.Module):
            for tensor in [*obj.parameters(), *obj.buffers()]:
                visit(tensor)
        elif isinstance(obj, torch.optim.Optimizer):
            for state in obj.state.values():
                visit(list(state.values()))
        elif isinstance(obj, dict):
            visit(list(obj.values()))
        elif isinstance(obj, list | tuple):
            for item in obj:
                visit(item)

    for holder in holders:
        visit(holder)
    return sum(seen.values()) / 2**20


def measure_step_peak(step: Callable[[], object], device: torch.device, *, repeats: int = 1) -> StepPeak:
    """Peak memory of one step on ``device``: live tensor bytes (both devices) and the process's high-water mark.

    With ``repeats > 1`` the resident set is read that many times and its median
    kept: the order in which Python frees a step's tensors varies a little
    between steps (we saw +-4%, one activation-sized tensor). Live bytes are
    counted once (the same on every run), last: run before it, the profiler
    left the resident set 10-30 MiB higher (its event buffers) at n = 2048.
    """
    if device.type == "cuda":
        peaks = [cuda_step_peak(step, device) for _ in range(repeats)]
        return StepPeak(
            added_mib=statistics.median(p.added_mib for p in peaks),
            process_mib=statistics.median(p.process_mib for p in peaks),
            method=LIVE_TENSORS,
        )
    resident = [cpu_step_peak(step) for _ in range(repeats)]
    live = cpu_live_step_mib(step)  # after: the profiler's own buffers would sit in the resident set's reading
    return StepPeak(
        added_mib=live,
        process_mib=statistics.median(p.process_mib for p in resident),
        method=LIVE_TENSORS,
        resident_added_mib=statistics.median(p.added_mib for p in resident),
    )
