"""Generated tasks: labels are right, splits are disjoint, generation is deterministic."""

from __future__ import annotations

import random

import pytest
import torch

from tasks import IGNORE, MQAR, PAD, ListOps, SelectiveCopy, listops, lookup, mqar, selective_copy


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
        ("[MIN 4 7 ]", 4),
        ("[SM 5 6 7 ]", 8),  # 18 mod 10
        ("[MED 1 9 5 ]", 5),
        ("[MED 1 2 3 4 ]", 2),  # median 2.5 truncates to 2, as LRA's int(np.median)
        ("[SM [MAX 3 8 ] [MIN 9 [MED 4 6 5 ] ] 1 ]", 4),  # 8 + 5 + 1 = 14
        ("[MAX [SM 9 9 ] [MIN 0 9 ] ]", 8),  # SM(9, 9) = 8
        ("7", 7),
    ],
)
def test_listops_evaluator_on_hand_worked_expressions(expression, value):
    assert listops.evaluate(expression.split()) == value


@pytest.mark.parametrize("bad", ["[MAX 1 2", "[MAX ]", "1 ]", "[FOO 1 ]"])
def test_listops_evaluator_rejects_malformed_expressions(bad):
    with pytest.raises(ValueError):
        listops.evaluate(bad.split())


def test_listops_generator_respects_length_depth_and_arguments():
    rng = random.Random(0)
    ids_to_token = {i: t for t, i in listops.VOCAB.items()}
    for _ in range(100):
        ids, label = listops.generate_example(rng, min_len=20, max_len=120, max_depth=4, max_args=5)
        tokens = [ids_to_token[i] for i in ids]
        assert 20 <= len(tokens) <= 120
        assert listops.evaluate(tokens) == label
        depth = max_depth = 0
        for t in tokens:
            depth += t.startswith("[") - (t == "]")
            max_depth = max(max_depth, depth)
        assert max_depth <= 4


def test_mqar_labels_are_the_values_bound_to_queried_keys():
    tokens, labels = mqar.generate_example(random.Random(1), seq_len=64, vocab_size=64, num_pairs=8, num_queries=6)
    bound = dict(zip(tokens[0:16:2], tokens[1:16:2], strict=True))
    scored = [(t, y) for t, y in zip(tokens, labels, strict=True) if y != IGNORE]
    assert len(scored) == 6 and len(tokens) == 64
    assert all(bound[t] == y for t, y in scored)
    keys, values = mqar.vocab_layout(64)
    assert set(bound) <= set(keys) and set(bound.values()) <= set(values)


def test_lookup_labels_are_the_values_of_the_queried_keys_and_min_distance_keeps_queries_far():
    num_keys, num_values = 8, 4
    for min_distance in (0, 40):
        rng = random.Random(min_distance)
        for _ in range(20):
            tokens, labels = lookup.generate_example(
                rng,
                seq_len=64,
                num_keys=num_keys,
                num_values=num_values,
                num_pairs=6,
                num_queries=5,
                min_distance=min_distance,
            )
            first_entry = lookup.FIRST_QUERY + num_keys
            entries = {
                (t - first_entry) // num_values: (i, (t - first_entry) % num_values)
                for i, t in enumerate(tokens)
                if t >= first_entry
            }
            queries = [
                (i, t - lookup.FIRST_QUERY) for i, t in enumerate(tokens) if lookup.FIRST_QUERY <= t < first_entry
            ]
            assert len(entries) == 6 and len(queries) == 5
            for position, key in queries:
                entry_position, value = entries[key]
                assert labels[position] == value
                assert position - entry_position > min_distance
            assert sum(label != IGNORE for label in labels) == 5
    with pytest.raises(ValueError, match="entry slots=12"):  # (64 - 40) / 2 slots for 13 entries
        lookup.generate_example(
            random.Random(0), seq_len=64, num_keys=16, num_values=4, num_pairs=13, num_queries=1, min_distance=40
        )


def test_selective_copy_labels_are_the_data_tokens_in_order():
    tokens, labels = selective_copy.generate_example(random.Random(2), seq_len=40, vocab_size=10, num_data=5)
    data_in_context = [t for t in tokens[:35] if t >= selective_copy.FIRST_DATA]
    assert labels[35:] == data_in_context and len(data_in_context) == 5
    assert tokens[35:] == [selective_copy.ANSWER] * 5
    assert all(y == IGNORE for y in labels[:35])


TASKS = [
    lambda seed: ListOps(
        seq_len=64, min_len=10, max_depth=3, max_args=4, num_train=300, num_val=50, num_test=50, seed=seed
    ),
    lambda seed: MQAR(
        seq_len=32, vocab_size=32, num_pairs=4, num_queries=4, num_train=300, num_val=50, num_test=50, seed=seed
    ),
    lambda seed: SelectiveCopy(seq_len=32, vocab_size=8, num_data=3, num_train=300, num_val=50, num_test=50, seed=seed),
]


@pytest.mark.parametrize("make", TASKS, ids=["listops", "mqar", "selective_copy"])
def test_splits_are_disjoint_deterministic_and_padded(make):
    task = make(0)
    rows = {split: task.dataset(split).tensors for split in ("train", "val", "test")}
    keys = {
        split: {tuple(t.tolist()) + tuple(y.flatten().tolist()) for t, y in zip(r[0], r[2], strict=True)}
        for split, r in rows.items()
    }
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"] and not keys["val"] & keys["test"]
    assert [len(r[0]) for r in rows.values()] == [300, 50, 50]
    again = make(0).dataset("train").tensors
    assert all(torch.equal(a, b) for a, b in zip(rows["train"], again, strict=True))
    other = make(1).dataset("train").tensors
    assert not torch.equal(rows["train"][0], other[0])
    tokens, mask, _ = rows["train"]
    assert tokens.shape[1] == task.seq_len
    assert torch.equal(mask, tokens != PAD) if task.head == "classify" else bool(mask.all())


def test_bad_task_settings_fail_before_any_work():
    with pytest.raises(ValueError, match="num_queries=9 must be <= num_pairs=8"):
        MQAR(seq_len=64, vocab_size=64, num_pairs=8, num_queries=9)
    with pytest.raises(ValueError, match="num_data=40"):
        SelectiveCopy(seq_len=64, num_data=40)
