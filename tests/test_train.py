"""Training runs end to end: loss goes down on every task, failures end as statuses."""

from __future__ import annotations

import itertools

import pytest

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
