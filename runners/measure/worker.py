"""Measure in a process of its own: the one worker protocol of the sweep's probes and the core benchmark.

Why a process per measurement: an out-of-memory kill, a hard crash or a hang
must end only its point; and the allocator state one measurement leaves
behind must not change the next one (:mod:`runners.measure.memory`). Timing
and memory even get a process each: timing runs with glibc's malloc
thresholds fixed high (``malloc="timing"``) so every process is timed in the
same allocator regime, while the fragmented heap that leaves behind would
inflate a memory reading taken afterwards (we saw +50% for ``full_math``),
and the memory probe pins the thresholds low for good.

Where the processes come from: multiprocessing's *forkserver*. A server
process imports torch and the probes once (``PRELOAD``) and forks a child
per measurement, so a point costs a fork (milliseconds) instead of a fresh
interpreter importing torch (2-3 s; 100 of them were 5 minutes of the default
sweep). The server never computes anything, so every child starts from the
same clean heap, as a fresh interpreter does; CUDA is initialized in the
child only. Results come back through a pipe; a child that dies before
answering is classified from its exit code and its stderr (written to a file).

:func:`run_concurrently` runs independent jobs (the accuracy runs of a sweep)
up to ``jobs`` at a time. It manages the processes itself instead of using
``concurrent.futures.ProcessPoolExecutor`` because a pool that loses a worker
fails every pending future (an out-of-memory kill of one run must be that
run's status alone) and cannot kill one hung task at its deadline.
"""

from __future__ import annotations

import ctypes
import importlib
import multiprocessing
import os
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from multiprocessing import spawn
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from runners.measure.failures import PointFailed, classify_exit, classify_failure, failure_message

PARTS = ("time", "flops", "memory")
# The processes a measurement takes: timing and the FLOP count (which does not mind the heap) in one, memory alone.
PROCESSES = (("time", "flops"), ("memory",))
# Imported once by the server, so a child starts with them loaded (the training stack is ~2 s on its own),
# and with the code as it was when the sweep started: a child that imported a module fresh from disk after
# the working tree changed mixed two versions and every later accuracy run failed (AttributeError).
PRELOAD = [
    "torch",
    "models",
    "variants",
    "tasks",
    "runners.measure.speed_probe",
    "runners.measure.decode_probe",
    "runners.measure.cross_probe",
    "runners.measure.core_probe",
    "runners.results.context",
    "runners.training.run",
    "runners.sweeping.execute",  # the accuracy runs' entry point and what it imports (configs, checks)
]
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_TIMING_THRESHOLD = 1 << 30  # what MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ would set in a fresh process
_context: Any = None


@dataclass(frozen=True)
class Job:
    """One call of ``function`` (``"module:name"``) with JSON-able ``kwargs`` in a process of its own."""

    function: str
    kwargs: dict[str, Any]
    threads: int | None = None  # torch threads in the child; None: torch's default
    timeout_s: float | None = None
    malloc: str | None = None  # "timing": glibc thresholds fixed high, see the module docstring


def worker_context() -> Any:
    """The forkserver context (spawn where there is none), with the probes preloaded."""
    global _context
    if _context is None:
        methods = multiprocessing.get_all_start_methods()
        _context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        if "forkserver" in methods:
            _context.set_forkserver_preload(PRELOAD)
    return _context


# What multiprocessing copies from the launcher into a child that our children must not inherit.
_LAUNCHER_ONLY = ("init_main_from_name", "init_main_from_path", "start_method")


@contextmanager
def _launcher_left_out() -> Iterator[None]:
    """Start a child without it re-running the launching script or adopting its start method.

    multiprocessing prepares a forkserver child like a spawned one: it imports the launcher's
    ``__main__`` again (``runners.sweep``'s Hydra setup, or a user's script that starts a sweep without
    an ``if __name__ == "__main__"`` guard, which would start it again) and sets the launcher's default
    start method (``loky`` inside a joblib job, unknown to a plain child). The child only needs
    :func:`_child`, found by its module, so those entries are dropped while one is started.
    """
    original = spawn.get_preparation_data

    def prepared(name: str) -> dict[str, Any]:
        return {key: value for key, value in original(name).items() if key not in _LAUNCHER_ONLY}

    spawn.get_preparation_data = prepared
    try:
        yield
    finally:
        spawn.get_preparation_data = original


class _Running:
    """A started job: its process, the read end of its pipe, its stderr file and its deadline."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.stderr = Path(tempfile.mkstemp(prefix="attnbench-worker-", suffix=".err")[1])
        receive, send = worker_context().Pipe(duplex=False)
        watched, self.lifeline = worker_context().Pipe(duplex=False)
        spec = {"function": job.function, "kwargs": job.kwargs, "threads": job.threads, "malloc": job.malloc}
        self.process = worker_context().Process(target=_child, args=(spec, send, watched, str(self.stderr)))
        with _launcher_left_out():
            self.process.start()
        send.close()  # the child holds the only write end: end of file once it exits
        watched.close()  # this process keeps the write end: closed by its exit, the child then ends
        self.connection: Connection = receive
        self.deadline = None if job.timeout_s is None else time.monotonic() + job.timeout_s
        self.reply: dict[str, Any] | None = None

    def receive(self) -> None:
        """Read the reply if the child sent one (it may have died instead: end of file)."""
        try:
            self.reply = self.connection.recv()
        except (EOFError, OSError):
            self.reply = None

    def outcome(self) -> dict[str, Any] | PointFailed:
        """The result dict, or the failure with its status, after the child has answered or died."""
        self.process.join()
        self.connection.close()
        self.lifeline.close()
        stderr = self.stderr.read_text(errors="replace") if self.stderr.exists() else ""
        self.stderr.unlink(missing_ok=True)
        if self.reply is None:
            code = self.process.exitcode or 0
            tail = (stderr.strip().splitlines() or [f"exit status {code}, no output"])[-1]
            how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            return PointFailed(classify_exit(code, stderr), f"{how}: {tail}"[:500])
        if "failure" in self.reply:
            failed = PointFailed(self.reply["failure"], self.reply["message"])
            failed.traceback = self.reply.get("traceback", "")
            return failed
        return self.reply["result"]

    def kill(self) -> PointFailed:
        self.process.kill()
        self.process.join()
        self.connection.close()
        self.lifeline.close()
        self.stderr.unlink(missing_ok=True)
        return PointFailed("timeout", f"exceeded {self.job.timeout_s}s")


def run_concurrently(jobs: Iterable[tuple[Any, Job]], *, max_jobs: int = 1) -> Iterator[tuple[Any, Any]]:
    """Run ``(key, job)`` pairs, at most ``max_jobs`` at a time; yields ``(key, result or PointFailed)`` as each ends.

    Jobs are started in order; whatever one of them does (raise, die, hang past its timeout) ends only it.
    """
    pending = iter(jobs)
    running: dict[Any, _Running] = {}
    exhausted = False
    while True:
        while not exhausted and len(running) < max(1, max_jobs):
            try:
                key, job = next(pending)
            except StopIteration:
                exhausted = True
                break
            running[key] = _Running(job)
        if not running:
            return
        deadlines = [r.deadline for r in running.values() if r.deadline is not None]
        timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        ready = wait([r.connection for r in running.values()], timeout=timeout)
        for key, job in list(running.items()):
            if job.connection in ready:
                job.receive()  # a reply, or end of file from a child that died
                yield key, job.outcome()
                del running[key]
            elif job.deadline is not None and time.monotonic() >= job.deadline:
                yield key, job.kill()
                del running[key]


def run_isolated(
    function: str,
    kwargs: dict[str, Any],
    *,
    threads: int | None,
    timeout_s: float | None = None,
    malloc: str | None = None,
) -> dict[str, Any]:
    """Call ``function`` (``"module:name"``) with JSON-able ``kwargs`` in a process of its own; its result dict.

    Raises :class:`~runners.measure.failures.PointFailed` with the status of whatever went wrong.
    """
    [(_, outcome)] = run_concurrently([(0, Job(function, kwargs, threads, timeout_s, malloc))])
    if isinstance(outcome, PointFailed):
        raise outcome
    return outcome


def measure_isolated(
    function: str,
    kwargs: dict[str, Any],
    *,
    threads: int | None,
    timeout_s: float | None = None,
    parts: Sequence[str] = PARTS,
) -> dict[str, Any]:
    """``function(**kwargs, parts=[...])`` once per process of :data:`PROCESSES` that ``parts`` needs; merged.

    ``function`` takes ``parts`` (a subset of :data:`PARTS`) and measures only those: timing and the FLOP
    count share a process with glibc's thresholds fixed for timing, memory gets one of its own.
    """
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown measurement part(s) {sorted(unknown)}; choose from {PARTS}")
    result: dict[str, Any] = {}
    for process in PROCESSES:
        wanted = [part for part in process if part in parts]
        if wanted:
            malloc = None if wanted == ["memory"] else "timing"
            result |= run_isolated(
                function, kwargs | {"parts": wanted}, threads=threads, timeout_s=timeout_s, malloc=malloc
            )
    return result


def fix_malloc_for_timing() -> bool:
    """Fix glibc's mmap and trim thresholds high in this process (False where there is no glibc)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return all(libc.mallopt(option, _TIMING_THRESHOLD) == 1 for option in (_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD))


def _end_with_the_launcher(lifeline: Connection) -> None:
    """End this child when the process that launched it dies (Ctrl-C, a kill, an OOM kill of the sweep).

    The launcher holds the only write end of ``lifeline`` until it has the reply; its death closes it,
    and the blocked read here returns end of file. (The worker server cannot do this: it stays alive
    as long as any child does.) So no measurement or training run goes on as an orphan.
    """

    def watch() -> None:
        with suppress(EOFError, OSError):
            lifeline.recv()
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="lifeline").start()


def _child(spec: dict[str, Any], connection: Connection, lifeline: Connection, stderr_path: str) -> None:
    """The child's side: stderr to its file, the allocator and threads set, the call, one reply."""
    _end_with_the_launcher(lifeline)
    with open(stderr_path, "w") as stderr:
        os.dup2(stderr.fileno(), 2)  # C++ aborts (std::bad_alloc) write here, not only Python
    if spec["malloc"] == "timing":
        fix_malloc_for_timing()
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    module, _, name = spec["function"].partition(":")
    try:
        function: Callable[..., dict[str, Any]] = getattr(importlib.import_module(module), name)
        reply = {"result": function(**spec["kwargs"])}
    except Exception as error:  # reported to the parent, which records it as the point's status
        reply = {
            "failure": classify_failure(error),
            "message": failure_message(error),
            "traceback": traceback.format_exc(limit=3)[-2000:],
        }
    connection.send(reply)
    connection.close()
