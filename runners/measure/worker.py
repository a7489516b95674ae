"""Measure in a fresh interpreter: the one worker protocol of the sweep's speed probe and the core benchmark.

Why a fresh process per measurement: an out-of-memory kill, a hard crash or a
hang must end only its point; and the allocator state one measurement leaves
behind must not change the next one (:mod:`runners.measure.memory`). Timing
and memory even get a process each: timing runs with glibc's malloc
thresholds fixed high (:func:`~runners.measure.memory.timing_env`) so every
process is timed in the same allocator regime, while the fragmented heap that
leaves behind would inflate a memory reading taken afterwards (we saw +50% for
``full_math``), and the memory probe pins the thresholds low for good.

Protocol: the parent runs ``python -m runners.measure.worker SPEC`` where SPEC
is JSON ``{"function": "module:name", "kwargs": {...}, "threads": n}``; the
child calls the function and prints one JSON line, ``{"result": {...}}`` or
``{"failure": status, "message": ...}``. Whatever goes wrong comes back to
the parent as :class:`~runners.measure.failures.PointFailed`.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from runners.measure.failures import PointFailed, classify_exit, classify_failure, failure_message
from runners.measure.memory import timing_env

PARTS = ("time", "memory")


def run_isolated(
    function: str,
    kwargs: dict[str, Any],
    *,
    threads: int,
    timeout_s: float | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Call ``function`` (``"module:name"``) with JSON-able ``kwargs`` in a fresh interpreter; its result dict."""
    spec = json.dumps({"function": function, "kwargs": kwargs, "threads": threads})
    command = [sys.executable, "-m", "runners.measure.worker", spec]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        raise PointFailed("timeout", f"exceeded {timeout_s}s") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}, no output"])[-1]
        how = f"killed by signal {-done.returncode}" if done.returncode < 0 else f"exit status {done.returncode}"
        raise PointFailed(classify_exit(done.returncode, done.stderr), f"{how}: {tail}"[:500])
    reply = json.loads(lines[-1])
    if "failure" in reply:
        raise PointFailed(reply["failure"], reply["message"])
    return reply["result"]


def measure_isolated(
    function: str,
    kwargs: dict[str, Any],
    *,
    threads: int,
    timeout_s: float | None = None,
    parts: Sequence[str] = PARTS,
) -> dict[str, Any]:
    """``function(**kwargs, parts=[part])`` for each part in its own fresh process; the merged results.

    ``function`` takes ``parts`` (a subset of ``("time", "memory")``) and measures only those.
    """
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown measurement part(s) {sorted(unknown)}; choose from {PARTS}")
    result: dict[str, Any] = {}
    for part in PARTS:
        if part in parts:
            env = timing_env() if part == "time" else None
            result |= run_isolated(function, kwargs | {"parts": [part]}, threads=threads, timeout_s=timeout_s, env=env)
    return result


def _serve(spec: dict[str, Any]) -> dict[str, Any]:
    """The child's side: call the function and wrap its result or its failure."""
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    module, _, name = spec["function"].partition(":")
    try:
        return {"result": getattr(importlib.import_module(module), name)(**spec["kwargs"])}
    except Exception as error:  # reported to the parent, which records it as the point's status
        return {"failure": classify_failure(error), "message": failure_message(error)}


if __name__ == "__main__":
    print(json.dumps(_serve(json.loads(sys.argv[1]))))
