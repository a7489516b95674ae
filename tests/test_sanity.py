"""The framework measures what it claims: known facts about attention come out of real training runs."""

from __future__ import annotations

import pytest

from runners.training.run import run_training

SPLITS = ["task.num_train=2000", "task.num_val=128", "task.num_test=256"]
LOOKUP = ["task=lookup", "task.seq_len=64", *SPLITS]
BUDGET = ["optim.max_steps=100", "optim.val_every=25", "optim.warmup_steps=20", "task.batch_size=16"]


@pytest.fixture
def train(compose_config):
    return lambda *overrides: run_training(compose_config("train", "model=small", "hardware.threads=2", *overrides))


def test_local_with_a_window_covering_the_sequence_matches_full_within_the_seed_spread(train):
    """Same function class, same step budget: the same accuracy up to seed noise."""
    variants = {"full": ["attention=full"], "local": ["attention=local", "attention.window=64"]}
    accuracy = {
        name: [train(*attention, *LOOKUP, *BUDGET, f"seed={seed}") for seed in (0, 1)]
        for name, attention in variants.items()
    }
    scores = {name: [run["test_acc"] for run in runs] for name, runs in accuracy.items()}
    baseline = accuracy["full"][0]["majority_baseline"]
    assert min(scores["full"]) > baseline + 0.5, scores  # full clearly learns the task in this budget
    assert max(scores["local"]) >= min(scores["full"]) and max(scores["full"]) >= min(scores["local"]), scores


def test_a_window_that_cannot_reach_the_keys_stays_near_the_baseline_where_full_learns(train):
    """MQAR with every query at least 24 tokens after its key: local with window 8 cannot see it."""
    mqar = [
        "task=mqar",
        "task.seq_len=64",
        "task.vocab_size=16",
        "task.min_query_gap=24",
        "task.batch_size=32",
        *SPLITS,
    ]
    budget = ["optim.max_steps=300", "optim.val_every=75", "optim.warmup_steps=20"]
    full = train("attention=full", *mqar, *budget)
    local = train("attention=local", "attention.window=8", *mqar, *budget)
    baseline = full["majority_baseline"]
    assert full["test_acc"] > baseline + 0.5, full["test_acc"]
    assert local["test_acc"] < baseline + 0.1, (local["test_acc"], baseline)
