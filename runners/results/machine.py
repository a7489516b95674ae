"""Which machine a timed number comes from: CPU microarchitecture and ISA, or GPU name, capability and memory.

Speed depends on the machine, not only on the hardware *config*: three AMD EPYC
VMs (Zen 4, Zen 5, and one without AVX-512) all read "AMD EPYC" and gave fp32
matmul peaks from ~100 to ~200 GFLOP/s. So the identity names the
microarchitecture as archspec does (``zen4``, ``icelake``, ``sapphirerapids``,
read from the CPU's flags, a maintained table rather than our own) and the
ISA extensions that change what the kernels can do here (AVX-512, AMX, native
bf16). On CUDA it is the GPU's name, compute capability and memory; driver and
CUDA versions are recorded beside it, not part of it (a driver update does not
make it another machine).

:func:`machine_identity` is what timed points carry in their identity
(:mod:`runners.sweeping.plan`), so two machines writing into one store each
measure their own points; :func:`machine_label` is the short text a report
section is headed with. The host name is recorded elsewhere but is not part
of either: two identical nodes of a cluster are one machine class.
"""

from __future__ import annotations

import platform
from functools import cache
from pathlib import Path
from typing import Any

import torch

ISA_FLAGS = {  # /proc/cpuinfo flag -> how the identity names it
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_bf16": "AVX-512 BF16",
    "amx_tile": "AMX",
}


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them (empty where there is no /proc/cpuinfo)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# (vendor, family) -> [(first model, last model, name)]: what archspec would say, from the CPU's family and model.
# archspec matches feature flags, and a VM hides some (``pku``, ``flush_l1d``): a Zen 4 guest then reads as the
# generic ``x86_64_v4``, the name a Zen 5 or an Ice Lake guest gets too. Family and model are never hidden.
FAMILY_MODELS = {
    ("AuthenticAMD", 0x17): [(0x00, 0x2F, "zen"), (0x30, 0xFF, "zen2")],
    ("AuthenticAMD", 0x19): [(0x10, 0x1F, "zen4"), (0x60, 0x7F, "zen4"), (0xA0, 0xAF, "zen4"), (0x00, 0xFF, "zen3")],
    ("AuthenticAMD", 0x1A): [(0x00, 0xFF, "zen5")],
    ("GenuineIntel", 0x06): [
        (0x3F, 0x3F, "haswell"),
        (0x4F, 0x4F, "broadwell"),
        (0x55, 0x55, "skylake_avx512"),  # also Cascade Lake and Cooper Lake (told apart by stepping)
        (0x6A, 0x6C, "icelake"),
        (0x8F, 0x8F, "sapphirerapids"),
        (0xCF, 0xCF, "emeraldrapids"),
        (0xAD, 0xAE, "graniterapids"),
    ],
}


def cpuinfo_fields() -> dict[str, str]:
    """The first processor's ``key: value`` lines of ``/proc/cpuinfo`` (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def family_microarchitecture(vendor: str, family: int, model: int) -> str | None:
    """The microarchitecture a vendor's CPU family and model name (:data:`FAMILY_MODELS`), or None if unknown."""
    for first, last, name in FAMILY_MODELS.get((vendor, family), []):
        if first <= model <= last:
            return name
    return None


@cache
def cpu_microarchitecture() -> str:
    """This CPU's microarchitecture (``zen4``, ``icelake``, ...): archspec's name, from the family and model where
    archspec only finds a generic level (``x86_64_v4``) because the VM hides flags, else the machine type."""
    try:
        import archspec.cpu

        name = str(archspec.cpu.host().name)
    except Exception:  # archspec missing or unable to read this CPU: the machine type still tells x86 from arm
        name = platform.machine() or "unknown"
    if not name.startswith("x86_64"):
        return name
    fields = cpuinfo_fields()
    try:
        family, model = int(fields["cpu family"]), int(fields["model"])
    except (KeyError, ValueError):
        return name
    return family_microarchitecture(fields.get("vendor_id", ""), family, model) or name


def cpu_identity() -> dict[str, Any]:
    """Model, microarchitecture and the ISA extensions that matter for these kernels."""
    flags = cpu_flags()
    return {
        "kind": "cpu",
        "cpu_model": cpu_model(),
        "microarch": cpu_microarchitecture(),
        "isa": [name for flag, name in ISA_FLAGS.items() if flag in flags],
    }


def gpu_identity(index: int = 0) -> dict[str, Any]:
    """Name, compute capability and memory of a CUDA device (its identity), with driver and CUDA versions."""
    props = torch.cuda.get_device_properties(index)
    identity: dict[str, Any] = {
        "kind": "cuda",
        "gpu_name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "gpu_memory_gib": round(props.total_memory / 2**30),
    }
    return identity


def gpu_versions() -> dict[str, Any]:
    """The CUDA runtime torch was built with and the driver's version (recorded, not part of the identity)."""
    versions: dict[str, Any] = {"cuda_runtime": torch.version.cuda}
    try:
        driver = torch._C._cuda_getDriverVersion()  # e.g. 12040 for 12.4
        versions["cuda_driver"] = f"{driver // 1000}.{driver % 1000 // 10}"
    except Exception:
        versions["cuda_driver"] = None
    return versions


def on_cuda(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") and torch.cuda.is_available()


def machine_identity(accelerator: str) -> dict[str, Any]:
    """What a timed point's numbers depend on beyond its config: the GPU, or the CPU, that runs it."""
    return gpu_identity() if on_cuda(accelerator) else cpu_identity()


def machine_label(identity: dict[str, Any]) -> str:
    """The identity in a few words: ``AMD EPYC 9R14 (zen4; AVX2, AVX-512)`` or ``NVIDIA H200 (sm 9.0, 141 GiB)``."""
    if identity.get("kind") == "cuda":
        return f"{identity['gpu_name']} (sm {identity['compute_capability']}, {identity['gpu_memory_gib']} GiB)"
    isa = ", ".join(identity.get("isa") or []) or "no AVX2"
    return f"{identity['cpu_model']} ({identity['microarch']}; {isa})"
