"""Multi-query associative recall (Arora et al. 2023, "Zoology").

A run of key-value pairs, then queries of some of the keys scattered over the
rest of the sequence; at each query the model must predict the value bound to
that key. Trained causally per token and scored only at the query positions.

Layout of one example of length ``seq_len`` (``PAD`` fills the gaps)::

    k1 v1 k2 v2 ... kP vP  0 0 k7 0 k2 0 0 k5 ...
                                ^ label v7 here
"""

from __future__ import annotations

import random

from tasks._base import IGNORE, PAD, Example, GeneratedTask


def vocab_layout(vocab_size: int) -> tuple[range, range]:
    """Keys and values come from disjoint halves of the non-padding vocabulary."""
    half = (vocab_size - 1) // 2
    return range(1, 1 + half), range(1 + half, 1 + 2 * half)


def generate_example(
    rng: random.Random, *, seq_len: int, vocab_size: int, num_pairs: int, num_queries: int, min_query_gap: int = 0
) -> tuple[list[int], list[int]]:
    """Token ids and per-position labels (``IGNORE`` except at the queries).

    Queries sit at least ``min_query_gap`` tokens after the last pair, so every
    queried key lies at least that far before its query.
    """
    keys, values = vocab_layout(vocab_size)
    if num_pairs > len(keys):
        raise ValueError(f"num_pairs={num_pairs} needs at least {2 * num_pairs + 1} tokens; vocab_size={vocab_size}")
    free = seq_len - 2 * num_pairs
    first_query = 2 * num_pairs + min_query_gap
    if num_queries > num_pairs or num_queries > seq_len - first_query:
        raise ValueError(
            f"num_queries={num_queries} must be <= num_pairs={num_pairs} and fit in the "
            f"{max(0, seq_len - first_query)} positions from {first_query} on (seq_len={seq_len}, "
            f"min_query_gap={min_query_gap})"
        )
    pair_keys = rng.sample(keys, num_pairs)
    pair_values = [rng.choice(values) for _ in range(num_pairs)]
    tokens = [t for kv in zip(pair_keys, pair_values, strict=True) for t in kv] + [PAD] * free
    labels = [IGNORE] * seq_len
    positions = sorted(rng.sample(range(first_query, seq_len), num_queries))
    for position, pair in zip(positions, rng.sample(range(num_pairs), num_queries), strict=True):
        tokens[position] = pair_keys[pair]
        labels[position] = pair_values[pair]
    return tokens, labels


class MQAR(GeneratedTask):
    """Zoology's multi-query associative recall: predict each queried key's value.

    Causal as in Zoology by default; ``causal=False`` trains a bidirectional
    encoder on the same examples (labels sit only at the queries and no later
    token carries them), so variants that cannot be causal can be scored too.
    """

    head = "token"

    def __init__(
        self,
        *,
        seq_len: int = 128,
        vocab_size: int = 64,
        num_pairs: int = 4,
        num_queries: int = 4,
        min_query_gap: int = 0,
        causal: bool = True,
        **common,
    ) -> None:
        super().__init__(**common)
        self.seq_len, self.vocab_size, self.num_classes = seq_len, vocab_size, vocab_size
        self.causal = causal
        self.num_pairs, self.num_queries, self.min_query_gap = num_pairs, num_queries, min_query_gap
        self.draw(random.Random(0))  # bad combinations fail here, before any work

    def draw(self, rng: random.Random) -> Example:
        return generate_example(
            rng,
            seq_len=self.seq_len,
            vocab_size=self.vocab_size,
            num_pairs=self.num_pairs,
            num_queries=self.num_queries,
            min_query_gap=self.min_query_gap,
        )
