"""The worker protocol: every measurement in a process of its own, forked from a server with torch loaded."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runners.measure.failures import PointFailed
from runners.measure.worker import Job, run_concurrently, run_isolated

REPO = Path(__file__).resolve().parent.parent


def test_side_by_side_jobs_end_only_themselves_and_each_gets_its_own_status():
    """One killed, one hung past its timeout, one failing, two fine: each outcome is its own job's."""
    jobs = [
        ("killed", Job("helpers:die", {"how": "SIGKILL"}, threads=1)),
        ("hung", Job("helpers:sleep_then_echo", {"seconds": 60, "value": 0}, threads=1, timeout_s=1.0)),
        ("raised", Job("helpers:die", {"how": "MemoryError"}, threads=1)),
        ("fine", Job("helpers:echo", {"value": 1}, threads=1)),
        ("fine too", Job("helpers:echo", {"value": 2}, threads=1)),
    ]
    outcomes = dict(run_concurrently(jobs, max_jobs=2))
    assert {key: o.status for key, o in outcomes.items() if isinstance(o, PointFailed)} == {
        "killed": "oom",
        "hung": "timeout",
        "raised": "oom",
    }
    assert outcomes["fine"] == {"value": 1} and outcomes["fine too"] == {"value": 2}


def test_jobs_run_side_by_side_up_to_the_limit():
    """max_jobs=2: the first two jobs' lifetimes overlap, the third starts only after one of them ended."""
    jobs = [(i, Job("helpers:sleep_then_echo", {"seconds": 1.0, "value": i}, threads=1)) for i in range(3)]
    ran = {key: value for key, value in run_concurrently(jobs, max_jobs=2)}
    assert max(ran[0]["started"], ran[1]["started"]) < min(ran[0]["ended"], ran[1]["ended"])
    assert ran[2]["started"] >= min(ran[0]["ended"], ran[1]["ended"])


def test_a_worker_starts_with_the_sweeps_code_already_imported():
    """Editing the working tree during a sweep must not reach its workers: they import nothing fresh."""
    loaded = run_isolated("helpers:loaded_modules", {"prefix": ""}, threads=1)["modules"]
    for name in ("tasks", "tasks.sort", "runners.sweeping.execute", "runners.hydra_glue.configs", "runners.checks"):
        assert name in loaded, name


def test_a_worker_gets_the_thread_count_it_is_given():
    assert run_isolated("helpers:torch_threads", {}, threads=1) == {"threads": 1}
    assert run_isolated("helpers:torch_threads", {}, threads=2) == {"threads": 2}


@pytest.mark.parametrize("how", ["script", "stdin"])
def test_a_launching_script_without_a_main_guard_is_not_run_again_by_its_workers(tmp_path, how):
    """A user's script that calls the probes at top level: its workers must not re-run it (nor fail)."""
    code = (
        "from runners.measure.worker import run_isolated\n"
        "print('script ran')\n"
        "print(run_isolated('runners.measure.failures:failure_message', {'error': ValueError('x')}, threads=1))\n"
    )
    script = tmp_path / "top_level.py"
    script.write_text(code)
    command = [sys.executable, str(script)] if how == "script" else [sys.executable, "-"]
    done = subprocess.run(
        command, input=None if how == "script" else code, capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["script ran", "ValueError: x"]


def test_workers_end_when_the_sweep_that_started_them_is_killed(tmp_path):
    """A killed parent leaves no worker running on (Linux: the kernel kills it with the server)."""
    pid_file = tmp_path / "pid"
    code = (
        "import sys\n"
        "from runners.measure.worker import run_isolated\n"
        f"run_isolated('helpers:write_pid_then_sleep', {{'path': {str(pid_file)!r}}}, threads=1)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env)
    for _ in range(600):
        if pid_file.exists() and pid_file.read_text():
            break
        time.sleep(0.1)
    worker = int(pid_file.read_text())
    parent.kill()
    parent.wait()
    for _ in range(100):
        if not Path(f"/proc/{worker}").exists() or "Z" in Path(f"/proc/{worker}/stat").read_text().split()[2]:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"worker {worker} still running after its sweep was killed")
