"""Training runs end to end: loss goes down on every task, failures end as statuses."""

from __future__ import annotations

import itertools
import math

import pytest

import variants
from runners.training.module import warmup_cosine
from runners.training.run import run_training

SMALL = ["model=tiny", "optim.max_steps=60", "optim.val_every=30", "optim.warmup_steps=5", "optim.max_time_s=120"]
TASK_OVERRIDES = {
    "mqar": ["task.seq_len=32", "task.vocab_size=32", "task.num_pairs=4", "task.num_queries=4"],
    "listops": ["task.seq_len=64", "task.min_len=10", "task.max_depth=3", "task.max_args=4"],
    "selective_copy": ["task.seq_len=32", "task.vocab_size=8", "task.num_data=3"],
}
SIZES = ["task.num_train=640", "task.num_val=64", "task.num_test=64", "task.batch_size=32"]


@pytest.fixture
def train_config(compose_config):
    """The single training run's config (conf/train.yaml) with overrides."""
    return lambda *overrides: compose_config("train", *overrides)


def mean_loss(trace, part):
    losses = [loss for _, loss in trace]
    return sum(losses[part]) / len(losses[part])


@pytest.mark.parametrize("task", sorted(TASK_OVERRIDES))
def test_short_training_run_lowers_the_loss(task, train_config):
    result = run_training(train_config(f"task={task}", *TASK_OVERRIDES[task], *SMALL, *SIZES))
    assert result["status"] == "ok", result
    assert result["steps"] == 60
    assert mean_loss(result["loss_trace"], slice(-2, None)) < 0.95 * mean_loss(result["loss_trace"], slice(0, 2))
    assert 0.0 <= result["test_acc"] <= 1.0


def test_same_config_same_metrics(train_config):
    overrides = ("task=mqar", *TASK_OVERRIDES["mqar"], *SMALL, *SIZES, "optim.max_steps=20")
    first, second = run_training(train_config(*overrides)), run_training(train_config(*overrides))
    assert first["test_acc"] == second["test_acc"]
    assert first["loss_trace"] == second["loss_trace"]


def test_causal_task_with_non_causal_variant_is_unsupported_not_a_crash(train_config):
    result = run_training(train_config("task=mqar", "attention=linformer", *TASK_OVERRIDES["mqar"], *SMALL, *SIZES))
    assert result["status"] == "unsupported"
    assert "cannot be causal" in result["message"]


def test_nan_loss_ends_the_run_as_diverged(train_config):
    overrides = ("task=mqar", *TASK_OVERRIDES["mqar"], *SMALL, *SIZES, "optim.lr=1e30", "optim.grad_clip=null")
    result = run_training(train_config(*overrides))
    assert result["status"] == "diverged", result
    assert "NaN/inf" in result["message"]


def test_warmup_then_cosine_schedule():
    values = [warmup_cosine(s, warmup_steps=10, total_steps=110) for s in range(111)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[60] == pytest.approx(0.55) and values[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(values[9:]))


BUSY = "import time\nend = time.time() + 120\nwhile time.time() < end:\n    pass\n"


def test_accuracy_depends_on_config_and_seed_only_not_on_machine_load(train_config):
    """The same point, once on an idle machine and once with two busy processes on the cores: identical results."""
    import os
    import subprocess
    import sys

    overrides = ("task=mqar", *TASK_OVERRIDES["mqar"], *SMALL, *SIZES, "optim.max_steps=40", "optim.val_every=10")
    overrides += ("hardware.threads=2", "model.dropout=0.1", "model.attn_dropout=0.1")  # dropout is seeded too
    idle = run_training(train_config(*overrides))
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(os.cpu_count() or 2)]
    try:
        loaded = run_training(train_config(*overrides))
    finally:
        for process in busy:
            process.kill()
    assert idle["status"] == loaded["status"] == "ok"
    assert idle["test_acc"] == loaded["test_acc"] and idle["steps"] == loaded["steps"] == 40
    accuracy_curve = [(p["step"], p["val_acc"], p["val_loss"]) for p in idle["learning_curve"]]
    assert accuracy_curve == [(p["step"], p["val_acc"], p["val_loss"]) for p in loaded["learning_curve"]]
    assert idle["loss_trace"] == loaded["loss_trace"]


def test_the_time_cap_ends_a_run_as_timeout_with_its_partial_curve_and_no_accuracy(train_config):
    overrides = ("task=mqar", *TASK_OVERRIDES["mqar"], *SIZES, "model=tiny", "optim.warmup_steps=5")
    result = run_training(train_config(*overrides, "optim.max_steps=100000", "optim.val_every=5", "optim.max_time_s=2"))
    assert result["status"] == "timeout" and "optim.max_time_s=2" in result["message"]
    assert "test_acc" not in result
    assert 0 < result["steps"] < 100000 and len(result["learning_curve"]) >= 1


def test_a_run_records_its_learning_curve_and_parameter_count(train_config):
    result = run_training(train_config("task=mqar", *TASK_OVERRIDES["mqar"], *SMALL, *SIZES))
    curve = result["learning_curve"]
    assert [p["step"] for p in curve] == [30, 60]
    assert all(0 <= p["val_acc"] <= 1 and p["val_loss"] > 0 for p in curve)
    assert all(0 < a["train_s"] < b["train_s"] and a["wall_s"] < b["wall_s"] for a, b in itertools.pairwise(curve))
    assert all(p["train_s"] <= p["wall_s"] for p in curve)
    assert curve[-1]["val_acc"] == pytest.approx(result["val_acc"])
    assert result["params"] > 1000 and result["max_steps"] == 60


class FakeTerminal:
    def __init__(self, tty: bool) -> None:
        self.tty, self.text = tty, ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


def test_progress_line_shows_steps_on_a_terminal_and_nothing_in_a_log():
    from types import SimpleNamespace

    from runners.training.progress import ProgressLine

    trainer = SimpleNamespace(is_global_zero=True, global_step=0, max_steps=5000)
    for tty in (True, False):
        stream = FakeTerminal(tty)
        line = ProgressLine("[5/30] full accuracy ...", stream=stream, every_s=0.0)
        for step in (1, 1200):
            trainer.global_step = step
            line.on_train_batch_end(trainer)
        line.on_train_end(trainer, None)
        if not tty:
            assert stream.text == ""
            continue
        assert "\r[5/30] full accuracy ... step 1,200/5,000" in stream.text
        shown = stream.text.split("\r")[-1]  # what the terminal shows after the run: the line, ready for its result
        assert shown == "[5/30] full accuracy ..."


def test_progress_line_travels_to_spawned_workers():
    import pickle

    from runners.training.progress import ProgressLine

    assert pickle.loads(pickle.dumps(ProgressLine("[1/2] x ..."))).prefix == "[1/2] x ..."


@pytest.mark.parametrize("name", variants.names())
def test_every_variant_trains_in_bf16_mixed_precision_on_cpu(name, train_config):
    overrides = ("task=mqar", *TASK_OVERRIDES["mqar"], *SMALL, *SIZES, "optim.max_steps=10", "optim.val_every=10")
    fits = [] if variants.get(name).supports_causal else ["task.causal=false"]
    fits += ["attention.k=16"] if name == "linformer" else []  # k <= seq_len
    bf16 = ("hardware.precision=bf16-mixed", "hardware.allow_emulated_bf16=true")  # tiny: seconds even if emulated
    result = run_training(train_config(*overrides, *fits, f"attention={name}", *bf16))
    assert result["status"] == "ok", result
    assert result["steps"] == 10 and all(math.isfinite(loss) for _, loss in result["loss_trace"])


def test_a_run_stops_at_the_first_validation_that_reaches_its_target_accuracy(train_config):
    """optim.target_acc ends training early at a step count (the same on every rerun), still tested as usual."""
    task = ["task=lookup", "task.seq_len=32", "task.causal=false", *SIZES, "model=tiny", "optim.warmup_steps=5"]
    overrides = (*task, "optim.max_steps=600", "optim.val_every=10", "optim.target_acc=0.5", "optim.lr=1e-2")
    first, second = run_training(train_config(*overrides)), run_training(train_config(*overrides))
    assert first["status"] == "ok" and first["stopped_at_target"], first
    assert first["steps"] < 600 and first["steps"] % 10 == 0
    assert first["learning_curve"][-1]["val_acc"] >= 0.5 > max(p["val_acc"] for p in first["learning_curve"][:-1])
    assert "test_acc" in first and second["steps"] == first["steps"] and second["test_acc"] == first["test_acc"]
    unreachable = run_training(train_config(*task, "optim.max_steps=20", "optim.val_every=10", "optim.target_acc=1.0"))
    assert unreachable["status"] == "ok" and unreachable["steps"] == 20 and not unreachable["stopped_at_target"]


def test_a_target_accuracy_outside_0_1_is_refused(train_config):
    from runners.checks import ConfigError

    with pytest.raises(ConfigError, match=r"optim.target_acc"):
        run_training(train_config("task=lookup", "task.seq_len=32", *SMALL, "optim.target_acc=1.5"))
