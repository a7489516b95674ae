"""The sorting task and an encoder-decoder training run: teacher-forced training, greedy-generation test."""

from __future__ import annotations

import random

import pytest
import torch

from runners.checks import ConfigError
from runners.training.run import run_training
from tasks import IGNORE, PAD, Sort
from tasks.sort import BOS, FIRST_VALUE, generate_example

TINY = [
    "task=sort",
    "task.seq_len=8",
    "task.num_values=4",
    "task.num_train=256",
    "task.num_val=32",
    "task.num_test=32",
    "task.batch_size=32",
    "model=tiny",
    "optim.max_steps=30",
    "optim.val_every=15",
    "optim.warmup_steps=3",
]


def test_the_target_is_the_source_sorted_and_padding_follows_the_length():
    rng = random.Random(0)
    for _ in range(50):
        source, target = generate_example(rng, seq_len=12, min_len=5, num_values=6)
        assert 5 <= len(source) <= 12 and target == sorted(source)
        assert all(FIRST_VALUE <= t < FIRST_VALUE + 6 for t in source)
    task = Sort(seq_len=12, min_len=5, num_values=6, num_train=64, num_val=16, num_test=16, batch_size=16)
    source, source_mask, decoder_in, labels = task.dataset("train").tensors
    assert source_mask.equal(source != PAD) and not source_mask.all()  # some sources are shorter
    assert (decoder_in[:, 0] == BOS).all()  # BOS, then the target shifted right
    real = labels != IGNORE
    assert decoder_in[:, 1:][real[:, 1:]].equal(labels[:, :-1][real[:, 1:]])
    assert real.sum(1).equal(source_mask.sum(1))  # one target token per source token
    assert task.vocab_size == FIRST_VALUE + 6


def test_bad_values_are_refused_before_any_work():
    with pytest.raises(ValueError, match="min_len=20 must be in"):
        Sort(seq_len=8, min_len=20)
    with pytest.raises(ValueError, match="num_values=1 must be at least 2"):
        Sort(num_values=1)


def test_an_encoder_decoder_run_trains_and_is_tested_by_greedy_generation(compose_config):
    cfg = compose_config("train", *TINY, "attention=performer", "cross_attention=linformer", "cross_attention.k=4")
    result = run_training(cfg)
    assert result["status"] == "ok", result
    assert result["cross_attention"]["name"] == "linformer" and result["cross_attention"]["k"] == 4
    assert 0.0 <= result["test_exact_match"] <= result["test_acc"] <= 1.0
    trace = [loss for _, loss in result["loss_trace"]]
    assert trace[-1] < trace[0]


def test_the_cross_variant_defaults_to_the_self_variant_or_full_and_is_checked(compose_config):
    result = run_training(compose_config("train", *TINY, "attention=local", "attention.window=4"))
    assert result["status"] == "ok" and result["cross_attention"] == {"name": "full"}
    with pytest.raises(ConfigError, match="cross_attention is for sequence-to-sequence tasks"):
        run_training(compose_config("train", "task=mqar", "cross_attention=full"))


def test_greedy_generation_reads_the_source_once_and_returns_the_target_length(compose_config):
    from runners.training.module import SequenceModel

    torch.manual_seed(0)
    module = SequenceModel(
        model={"dim": 32, "layers": 1, "heads": 2},
        attention={"name": "full"},
        vocab_size=6,
        num_classes=6,
        seq_len=8,
        head="token",
        causal=True,
        lr=1e-3,
        weight_decay=0.0,
        warmup_steps=1,
        max_steps=1,
        seq2seq=True,
    ).eval()
    source = torch.randint(FIRST_VALUE, 6, (3, 8))
    predicted = module.greedy(source, None, 8)
    assert predicted.shape == (3, 8)
    # greedy == teacher forcing on its own predictions
    decoder_in = torch.cat([torch.full((3, 1), BOS), predicted[:, :-1]], dim=1)
    assert module.model(decoder_in, None, source, None).argmax(-1).equal(predicted)
