"""Scale-out on existing engines: Hydra's joblib and submitit launchers, Lightning DDP on CPU (gloo)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from runners.hydra_glue import launch
from runners.hydra_glue.configs import CONF_DIR
from runners.results import store

POINT = [
    "model=tiny",
    "sweep.seq_lens=[32]",
    "sweep.accuracy=null",
    "sweep.maps=false",
    "sweep.decode_lens=[]",
    "sweep.cross=null",
    "sweep.repeats=1",
    "sweep.warmup=0",
    "sweep.batch_size=2",
    "sweep.baselines=[]",  # parallel jobs would both measure full beside full_math
    "logger=none",
]


def test_threads_are_divided_among_parallel_jobs():
    joblib = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}
    assert launch.threads_per_job(0, joblib, cpus=8) == 4
    assert launch.threads_per_job(0, joblib | {"n_jobs": -1}, cpus=8) == 1  # one job per CPU
    assert launch.threads_per_job(0, joblib | {"n_jobs": 16}, cpus=8) == 1
    assert launch.threads_per_job(3, joblib, cpus=8) == 3  # an explicit hardware.threads wins
    submitit = {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"}
    assert launch.threads_per_job(0, submitit | {"cpus_per_task": 2}, cpus=8) == 2
    assert launch.threads_per_job(0, submitit | {"cpus_per_task": None}, cpus=8) == 8
    assert launch.threads_per_job(0, None, cpus=8) == 8  # not under a launcher: the whole machine


def multirun(tmp_path: Path, *launcher: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "runners.sweep",
        "-m",
        *launcher,
        "attention=full,full_math",
        *POINT,
        "results_dir=store",
        "report_dir=report",
        "hydra.sweep.dir=multirun",
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def check_merged(tmp_path: Path, expected_threads: int) -> None:
    files = sorted((tmp_path / "store" / "points").glob("*.json"))
    records = store.read_records(tmp_path / "store")
    assert len(files) == len(records) == 2 and all(r["status"] == "ok" for r in records)
    assert {(r["variant"], r["seq_len"]) for r in records} == {("full", 32), ("full_math", 32)}
    assert len({f.name.rsplit("-", 1)[-1] for f in files}) == 2  # written by two job processes
    assert {r["config"]["hardware"]["threads"] for r in records} == {expected_threads}
    assert len({r["sweep_id"] for r in records}) == 1  # one wandb group for the whole multirun
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Built from **2 results**" in text  # one report, built once, from both jobs' points
    assert len(pd.read_csv(tmp_path / "report" / "results.csv")) == 2


def test_joblib_multirun_with_two_jobs_merges_into_one_store_and_report(tmp_path):
    done = multirun(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert "launching 2 jobs" in done.stderr + done.stdout
    check_merged(tmp_path, expected_threads=max(1, launch.available_cpus() // 2))


def test_submitit_local_multirun_merges_into_one_store_and_report(tmp_path):
    multirun(tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=1")
    check_merged(tmp_path, expected_threads=1)  # cpus_per_task becomes each job's torch threads
    assert list((tmp_path / "multirun" / ".submitit").iterdir())  # really went through submitit


@pytest.mark.parametrize(
    ("launcher", "target", "settings"),
    [
        ("local", "BasicLauncher", {}),
        ("joblib", "JoblibLauncher", {"n_jobs": 2}),
        ("submitit_local", "LocalLauncher", {"cpus_per_task": 1}),
        ("submitit_slurm", "SlurmLauncher", {"gpus_per_node": 1, "timeout_min": 240, "mem_gb": 64}),
    ],
)
def test_launcher_group_selects_the_hydra_plugin_with_project_settings(launcher, target, settings):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    assert "partition" in cfg.hydra.launcher or launcher != "submitit_slurm"
    for key, value in settings.items():
        assert cfg.hydra.launcher[key] == value


DDP_TRAIN = [
    "model=tiny",
    "hardware=cpu_ddp",
    "optim.max_steps=8",
    "optim.warmup_steps=2",
    "optim.val_every=4",
    "task.num_train=256",
    "task.num_val=32",
    "task.num_test=32",
    "task.batch_size=16",
    "task.seq_len=32",
    "task.vocab_size=32",
]


def test_two_process_cpu_ddp_training_reports_throughput_per_device_and_total(tmp_path):
    command = [sys.executable, "-m", "runners.train", *DDP_TRAIN, "hardware.strategy=ddp", "hydra.run.dir=."]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = ast.literal_eval(next(line for line in done.stdout.splitlines() if line.startswith("{")))
    assert result["status"] == "ok" and result["strategy"] == "ddp" and result["steps"] == 8
    assert result["world_size"] == 2
    assert result["train_tokens_per_s_per_device"] > 0
    assert result["train_tokens_per_s_total"] == pytest.approx(2 * result["train_tokens_per_s_per_device"])
