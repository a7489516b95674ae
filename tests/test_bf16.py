"""bf16 is known before it is used: the fingerprint says whether it is native, nothing stalls where it is not.

Where a CPU has no native bf16 (no AVX-512, AMX or Arm bf16), a bf16 matmul
is hundreds of times slower than fp32. ``ONEDNN_MAX_CPU_ISA=AVX2`` makes any
x86 CPU such a machine for oneDNN, so the emulation tests below behave the
same on every CI machine. Refusals are tested with ``bf16_native`` patched
both ways, so they do not depend on the CPU either.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import TINY_SWEEP

from runners import bench
from runners.measure import bf16, matmul_peak
from runners.results import context, store
from runners.sweeping.plan import ConfigError
from runners.sweeping.run import run_sweep
from runners.training.run import run_training

EMULATED = {"ONEDNN_MAX_CPU_ISA": "AVX2"}  # oneDNN then reports and runs no native bf16
FINGERPRINT = "import json; from runners.results.context import hardware_fingerprint as f; print(json.dumps(f('cpu')))"
ONE_POINT = ["attention=full", *TINY_SWEEP, "sweep.accuracy=null", "sweep.seq_lens=[32]", "logger=none"]


def run_emulated(args: list[str], cwd) -> subprocess.CompletedProcess:
    """A fresh interpreter on an emulated no-bf16 CPU; the timeout is a stall guard, not a speed check."""
    env = os.environ | EMULATED
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


@pytest.fixture
def sweep_config(compose_config):
    return lambda *overrides: compose_config("config", *TINY_SWEEP, *overrides)


def test_fingerprint_under_emulation_says_bf16_is_not_native_and_skips_its_peak(tmp_path):
    done = run_emulated(["-c", FINGERPRINT], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert info["bf16_native"] is False
    assert set(info["matmul_gflops"]) == {"fp32"} and info["matmul_gflops"]["fp32"] > 0


def test_one_point_sweep_runs_under_emulation_and_bf16_mixed_is_refused_before_any_work(tmp_path):
    paths = [f"results_dir={tmp_path / 'store'}", f"report_dir={tmp_path / 'report'}", "hydra.run.dir=hydra"]
    done = run_emulated(["-m", "runners.sweep", *ONE_POINT, *paths], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    (record,) = store.read_records(tmp_path / "store")
    assert record["status"] == "ok" and record["train_tokens_per_s"] > 0
    assert record["hardware_info"]["bf16_native"] is False
    assert "bf16: emulated on this CPU, not measured" in (tmp_path / "report" / "report.md").read_text()

    refused = run_emulated(
        ["-m", "runners.sweep", *ONE_POINT, "hardware.precision=bf16-mixed", *paths, "results_dir=elsewhere"], tmp_path
    )
    assert refused.returncode == 1
    assert "config error: bf16 is emulated on this CPU" in refused.stderr
    assert "hardware.precision=32-true" in refused.stderr and "hardware.allow_emulated_bf16=true" in refused.stderr
    assert not (tmp_path / "elsewhere").exists()


def test_bf16_native_on_this_cpu_is_onednns_answer():
    assert bf16.bf16_native("cpu") is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert bf16.bf16_native("meta") is False


@pytest.fixture
def emulated(monkeypatch):
    monkeypatch.setattr(bf16, "bf16_native", lambda device="cpu": False)


def test_sweep_with_bf16_mixed_on_emulated_bf16_is_a_config_error(emulated, tmp_path, sweep_config):
    with pytest.raises(ConfigError, match=r"bf16 is emulated on this CPU.*hardware\.precision=32-true"):
        run_sweep(sweep_config("attention=full", "hardware.precision=bf16-mixed"))
    assert not (tmp_path / "store").exists()


def test_training_with_bf16_mixed_on_emulated_bf16_is_refused(emulated, compose_config):
    cfg = compose_config("train", "hardware.precision=bf16-mixed")
    with pytest.raises(bf16.EmulatedBF16Error, match=r"hardware\.allow_emulated_bf16=true"):
        run_training(cfg)


def test_the_override_measures_emulated_bf16_with_its_line_printed_once(emulated, monkeypatch, capsys):
    monkeypatch.setattr(bf16, "_SAID", set())
    for _ in range(3):
        bf16.check_precision({"accelerator": "cpu", "precision": "bf16-mixed", "allow_emulated_bf16": True})
    said = capsys.readouterr().err.splitlines()
    assert said == ["measuring emulated bf16 on this CPU (hardware.allow_emulated_bf16=true): expect ~500x fp32's time"]
    bf16.check_precision({"accelerator": "cpu", "precision": "32-true"})  # fp32 is never refused


def test_native_bf16_is_never_refused(monkeypatch):
    monkeypatch.setattr(bf16, "bf16_native", lambda device="cpu": True)
    bf16.check_precision({"accelerator": "cpu", "precision": "bf16-mixed", "allow_emulated_bf16": False})


def test_bench_refuses_bf16_on_emulated_bf16_with_the_fix(emulated, tmp_path):
    with pytest.raises(SystemExit, match=r"--dtype fp32, or --allow-emulated-bf16"):
        bench.main(["--variants", "full", "--seq-lens", "32", "--dtype", "bf16", "--out", str(tmp_path / "b.jsonl")])
    assert not (tmp_path / "b.jsonl").exists()


def test_matmul_probe_fits_a_slow_dtype_into_its_budget(monkeypatch):
    """A dtype at 0.1 s per 256x256 call (a thousand times slow) stops growing at 256 and stays in budget."""
    calls = []

    def slow_call(a, b, device):
        calls.append((a.shape[0], 0.1 * (a.shape[0] / 256) ** 3))
        return calls[-1][1]

    monkeypatch.setattr(matmul_peak, "_one_call_s", slow_call)
    rate, size = matmul_peak.matmul_gflops(torch.float32, torch.device("cpu"), budget_s=1.5)
    assert size == 256 and rate > 0  # 512 would need 6 x 0.8 s
    # calibration at 64, then a warm-up and a timed call at each larger size, then repeats at the chosen one
    assert [n for n, _ in calls[:6]] == [64, 64, 128, 128, 256, 256] and {n for n, _ in calls[6:]} == {256}
    assert sum(seconds for _, seconds in calls) <= 1.5  # every call it made fits the budget


def test_matmul_probe_on_a_hopelessly_slow_device_makes_one_call(monkeypatch):
    """Where even the 64x64 warm-up takes longer than the budget, that one call is the measurement."""
    calls = []
    monkeypatch.setattr(matmul_peak, "_one_call_s", lambda a, b, device: calls.append(a.shape[0]) or 60.0)
    rate, size = matmul_peak.matmul_gflops(torch.bfloat16, torch.device("cpu"), budget_s=1.5)
    assert calls == [64] and size == 64 and rate == pytest.approx(2 * 64**3 / 60.0 / 1e9)


def test_matmul_probe_grows_the_size_while_calls_fit():
    rate, size = matmul_peak.matmul_gflops(torch.float32, torch.device("cpu"), budget_s=0.05)
    assert size in matmul_peak.SIZES and size < 2048 and rate > 0  # 2048 would take 17 GFLOP a call


def test_the_peak_is_the_fastest_of_its_attempts_and_every_attempt_is_kept(monkeypatch):
    """One process's probe is a sample (a slow phase of the VM read 103 GFLOP/s beside 165): the fingerprint keeps
    every attempt, each with fresh operands, and the peak is the fastest."""
    readings = iter([150.0, 180.0, 103.5])
    monkeypatch.setattr(matmul_peak, "matmul_gflops", lambda dtype, device, budget_s: (next(readings), 2048))
    monkeypatch.setattr(matmul_peak, "bf16_native", lambda device="cpu": False)
    info = context.hardware_fingerprint("cpu")
    assert info["matmul_gflops_attempts"] == {"fp32": [150.0, 180.0, 103.5]}
    assert info["matmul_gflops"] == {"fp32": 180.0}


def test_peak_in_words_says_when_bf16_was_not_measured():
    words = matmul_peak.describe_peak({"fp32": 144.4}, bf16_native=False)
    assert words == "fp32 144 GFLOP/s; bf16: emulated on this CPU, not measured"
    assert matmul_peak.describe_peak({"fp32": 144.4, "bf16": 300.0}, bf16_native=True) == (
        "fp32 144 GFLOP/s; bf16 300 GFLOP/s"
    )
    assert matmul_peak.describe_peak({"fp32": 1.0}, bf16_native=None) == "fp32 1 GFLOP/s"  # older records
