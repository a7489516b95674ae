"""Multi-query associative recall (Arora et al. 2023, "Zoology").

A run of key-value pairs, then queries of some of the keys scattered over the
rest of the sequence; at each query the model must predict the value bound to
that key. Trained causally per token and scored only at the query positions.

Layout of one example of length ``seq_len`` (token 0 is padding/filler)::

    k1 v1 k2 v2 ... kP vP  0 0 k7 0 k2 0 0 k5 ...
                                ^ label v7 here
"""

from __future__ import annotations

import random

IGNORE = -100


def vocab_layout(vocab_size: int) -> tuple[range, range]:
    """Keys and values come from disjoint halves of the non-padding vocabulary."""
    half = (vocab_size - 1) // 2
    return range(1, 1 + half), range(1 + half, 1 + 2 * half)


def generate_example(
    rng: random.Random, *, seq_len: int, vocab_size: int, num_pairs: int, num_queries: int
) -> tuple[list[int], list[int]]:
    """Token ids and per-position labels (``IGNORE`` except at the queries)."""
    keys, values = vocab_layout(vocab_size)
    if num_pairs > len(keys):
        raise ValueError(f"num_pairs={num_pairs} needs at least {2 * num_pairs + 1} tokens; vocab_size={vocab_size}")
    free = seq_len - 2 * num_pairs
    if num_queries > num_pairs or num_queries > free:
        raise ValueError(
            f"num_queries={num_queries} must be <= num_pairs={num_pairs} and fit in the "
            f"{free} positions after the pairs (seq_len={seq_len})"
        )
    pair_keys = rng.sample(keys, num_pairs)
    pair_values = [rng.choice(values) for _ in range(num_pairs)]
    tokens = [t for kv in zip(pair_keys, pair_values, strict=True) for t in kv] + [0] * free
    labels = [IGNORE] * seq_len
    positions = sorted(rng.sample(range(2 * num_pairs, seq_len), num_queries))
    for position, pair in zip(positions, rng.sample(range(num_pairs), num_queries), strict=True):
        tokens[position] = pair_keys[pair]
        labels[position] = pair_values[pair]
    return tokens, labels
