"""How a failed point is named: the one classification of every failure, in-process or in a worker.

A point's status is what the report shows: ``oom``, ``diverged``,
``unsupported``, ``timeout`` or ``error``. Exceptions raised where the point
ran (:func:`classify_failure`) and deaths of a worker process
(:func:`classify_exit`) are named here and nowhere else.
"""

from __future__ import annotations

import signal

import torch

import variants

# What allocators print when memory runs out: torch's CPU and CUDA allocators, and C++'s operator new.
_OOM_TEXT = ("out of memory", "can't allocate", "bad_alloc")


class PointFailed(Exception):
    """A point that failed where it ran (e.g. in its own subprocess), carrying the status it earned there."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def _mentions_oom(text: str) -> bool:
    text = text.lower()
    return any(pattern in text for pattern in _OOM_TEXT)


def classify_failure(error: BaseException) -> str:
    """The status of a point that raised ``error``."""
    if isinstance(error, PointFailed):
        return error.status
    if isinstance(error, torch.cuda.OutOfMemoryError | MemoryError) or _mentions_oom(str(error)):
        return "oom"
    if isinstance(error, FloatingPointError):
        return "diverged"
    if isinstance(error, variants.AttentionError):
        return "unsupported"
    return "error"


def classify_exit(returncode: int, stderr: str) -> str:
    """The status of a worker process that ended with ``returncode`` before reporting a result.

    The kernel's out-of-memory killer sends SIGKILL (a shell reports it as
    137); an allocation failure in C++ aborts with ``std::bad_alloc``. Any
    other death is an ``error``.
    """
    if returncode in (-signal.SIGKILL, 128 + signal.SIGKILL) or _mentions_oom(stderr):
        return "oom"
    return "error"


def failure_message(error: BaseException) -> str:
    """One line for the record: the exception type and its message, kept short."""
    text = str(error) if isinstance(error, PointFailed) else f"{type(error).__name__}: {error}"
    return text[:500]
