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


# Recall against state size (Zoology's shape), on lookup at n = 64: P entries in the first 32 positions, P
# queries in the last 32, one layer, trained causally until validation reaches 0.99.
def recall(pairs: int, values: int) -> list[str]:
    return [
        "task=lookup",
        "task.seq_len=64",
        f"task.num_keys={pairs}",
        f"task.num_pairs={pairs}",
        f"task.num_queries={pairs}",
        f"task.num_values={values}",
        "task.batch_size=32",
        "task.num_train=4000",
        "task.num_val=128",
        "task.num_test=256",
        "model.layers=1",
        "optim.val_every=25",
        "optim.warmup_steps=20",
        "optim.target_acc=0.99",
    ]


def test_attention_keeps_near_perfect_recall_at_every_width_tried(train):
    """Its KV cache holds every pair, whatever the width: 16 pairs are recalled at width 32 and 64."""
    scores = {
        dim: train("attention=full", f"model.dim={dim}", *recall(16, 4), "optim.max_steps=600") for dim in (32, 64)
    }
    assert all(run["test_acc"] >= 0.95 for run in scores.values()), {d: r["test_acc"] for d, r in scores.items()}


def test_a_constant_state_loses_recall_as_the_number_of_pairs_grows(train):
    """Linear attention at width 32 keeps a (8 x 8) summary per head: 8 pairs fit, 32 do not."""
    few = train("attention=linear", "model.dim=32", *recall(8, 8), "optim.max_steps=600")
    many = train("attention=linear", "model.dim=32", *recall(32, 8), "optim.max_steps=600")
    assert few["test_acc"] >= 0.95, few["test_acc"]
    assert many["test_acc"] < few["test_acc"] - 0.15, (few["test_acc"], many["test_acc"])
