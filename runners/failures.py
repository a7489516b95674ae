"""How a failed point is named: one classification for in-process and isolated measurements."""

from __future__ import annotations

import json
import signal
import subprocess
from typing import Any

import torch

import variants


class PointFailed(Exception):
    """A point that failed where it ran (e.g. in its own subprocess), carrying the status it earned there."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def classify_failure(error: BaseException) -> str:
    """``oom``, ``diverged``, ``unsupported``, ``timeout`` or ``error``: what the report shows for the point."""
    if isinstance(error, PointFailed):
        return error.status
    text = str(error).lower()
    if isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in text or "can't allocate" in text:
        return "oom"
    if isinstance(error, FloatingPointError):
        return "diverged"
    if isinstance(error, variants.AttentionError) or text.startswith("unsupported"):
        return "unsupported"
    return "error"


def run_json_worker(
    command: list[str], *, timeout_s: float | None, env: dict[str, str] | None, any_signal_is_oom: bool = False
) -> dict[str, Any]:
    """Run a measuring subprocess and return the JSON object on its last stdout line.

    A timeout, a SIGKILL (the kernel's out-of-memory killer) or a crash becomes
    :class:`PointFailed` with status ``timeout``, ``oom`` or ``error`` (``any_signal_is_oom``:
    every death by signal counts as ``oom``, as the core benchmark has always read it); a worker
    that caught its own failure reports ``{"failure": status, "message": ...}``.
    """
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        raise PointFailed("timeout", f"exceeded {timeout_s}s") from None
    killed = done.returncode < 0 if any_signal_is_oom else done.returncode == -signal.SIGKILL
    if killed or done.returncode == 137:
        raise PointFailed("oom", f"killed by signal {-done.returncode} (out of memory)")
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}, no output"])[-1]
        raise PointFailed("error", tail[:500])
    result = json.loads(lines[-1])
    if "failure" in result:
        raise PointFailed(result["failure"], result["message"])
    return result
