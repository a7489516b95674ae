"""Every training value is checked before any work: a sweep stops before its first point, a run before a step."""

from __future__ import annotations

import pytest
from helpers import TINY_SWEEP

from runners.checks import ConfigError, check_optim
from runners.sweeping.run import run_sweep
from runners.training.run import run_training

BAD_OPTIM = [
    ("optim.lr=-1", r"optim\.lr=-1 is out of range; allowed: \(0\.0, inf\]"),
    ("optim.lr=0", r"optim\.lr=0 is out of range"),
    ("optim.weight_decay=-0.01", r"optim\.weight_decay=-0\.01 is out of range; allowed: \[0\.0, inf\]"),
    ("optim.max_steps=0", r"optim\.max_steps=0 is out of range; allowed: \[1, inf\]"),
    ("optim.max_steps=2.5", r"optim\.max_steps=2\.5 must be an integer"),
    ("optim.warmup_steps=500", r"optim\.warmup_steps=500 is out of range; allowed: \[0, 20\]"),
    ("optim.val_every=0", r"optim\.val_every=0 is out of range; allowed: \[1, inf\]"),
    ("optim.max_time_s=0", r"optim\.max_time_s=0 is out of range"),
    ("optim.grad_clip=-1", r"optim\.grad_clip=-1 is out of range"),
    ("optim.limit_val_batches=1.5", r"optim\.limit_val_batches=1\.5 is out of range; allowed: \(0\.0, 1\.0\]"),
    ("optim.lr=fast", r"optim\.lr='fast' must be a number"),
]
BAD_TASK = [
    ("num_train", "0"),
    ("num_val", "0"),
    ("num_test", "-3"),
    ("batch_size", "0"),
]


@pytest.fixture
def sweep_config(compose_config):
    return lambda *overrides: compose_config("config", *TINY_SWEEP, "attention=full", *overrides)


@pytest.mark.parametrize(("override", "message"), BAD_OPTIM)
def test_a_bad_optimizer_value_stops_the_sweep_before_any_point(override, message, tmp_path, sweep_config):
    with pytest.raises(ConfigError, match=message):
        run_sweep(sweep_config(override))
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize(("key", "value"), BAD_TASK)
def test_a_bad_task_size_stops_the_sweep_before_any_point(key, value, tmp_path, sweep_config):
    with pytest.raises(ConfigError, match=rf"sweep\.accuracy\.mqar at seq_len=32: {key}={value} is out of range"):
        run_sweep(sweep_config(f"sweep.accuracy.mqar.{key}={value}"))
    assert not (tmp_path / "store").exists()


def test_a_bad_rate_of_the_grid_or_of_one_entry_stops_the_sweep(sweep_config):
    with pytest.raises(ConfigError, match=r"sweep\.lrs\[\*\]=-0\.1 is out of range"):
        run_sweep(sweep_config("sweep.lrs=[0.001,-0.1]"))
    with pytest.raises(ConfigError, match=r"sweep\.accuracy\.mqar\.optim\.warmup_steps=50 is out of range"):
        run_sweep(sweep_config("+sweep.accuracy.mqar.optim={warmup_steps:50}"))


def test_values_do_not_matter_where_nothing_trains(sweep_config):
    """A speed-only sweep never builds an optimizer, so its optimizer values are not its business."""
    run_sweep(sweep_config("sweep.accuracy=null", "sweep.seq_lens=[16]", "optim.lr=-1"))


@pytest.mark.parametrize(
    "override",
    ["optim.lr=-1", "optim.max_steps=0", "task.batch_size=0", "task.num_val=0"],
)
def test_a_training_run_refuses_bad_values_before_its_first_step(override, compose_config):
    with pytest.raises(ConfigError, match=r"is out of range"):
        run_training(compose_config("train", override))


def test_good_values_pass():
    check_optim({"lr": 1e-3, "weight_decay": 0.0, "max_steps": 10, "warmup_steps": 0, "val_every": 10,
                 "max_time_s": 1, "grad_clip": None, "limit_val_batches": 4})  # fmt: skip


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sweep.seeds=[a]", r"sweep\.seeds=\['a'\]: seeds must be integers"),
        ("sweep.seeds=[0,1.5]", r"sweep\.seeds=\[0, 1\.5\]: seeds must be integers"),
        ("model.layers=0", r"model\.layers=0 is out of range; allowed: \[1, inf\]"),
        ("model.heads=0", r"model\.heads=0 is out of range"),
        ("+sweep.accuracy.mqar.model={layers:0}", r"sweep\.accuracy\.mqar\.model\.layers=0 is out of range"),
    ],
)
def test_bad_seeds_and_model_sizes_stop_the_sweep_before_any_point(override, message, tmp_path, sweep_config):
    with pytest.raises(ConfigError, match=message):
        run_sweep(sweep_config(override))
    assert not (tmp_path / "store").exists()


def test_a_store_that_cannot_be_written_stops_the_sweep_before_any_point(tmp_path, sweep_config):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    with pytest.raises(ConfigError, match=r"results_dir=.*a-file/store: cannot write there .*give a writable folder"):
        run_sweep(sweep_config(f"results_dir={blocked / 'store'}"))
    with pytest.raises(ConfigError, match=r"report_dir=.*a-file/report: cannot write there"):
        run_sweep(sweep_config(f"report_dir={blocked / 'report'}"))
    assert not (tmp_path / "store").exists()  # nothing was measured
