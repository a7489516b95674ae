"""Single-hop associative recall: look keys up in a dictionary spread over the context.

``num_pairs`` dictionary entries, each *one* token that encodes a key and its
value, sit at random positions of the first half of the sequence; the second
half holds ``num_queries`` query tokens (a key each) at random positions among
filler, and at each query the model predicts the value bound to that key.
With ``min_distance`` = d > 0 the entries sit in the first (n - d) / 2
positions and the queries in the last ones, d positions apart: every query is
more than d tokens after every entry, so a window that sees at most d keys
back provably cannot answer it (the mechanism of a separating setting).

Why beside MQAR: MQAR's keys and values are separate tokens, so a model must
first bind each value to its key and then look the key up (two attention
hops); a small model on a CPU needs millions of tokens before it leaves the
"any value in context" plateau. Here one attention hop suffices, so it is
learned in a few hundred steps, and what it tests is what efficient attention
changes: content-based access across the whole context. A local window that
does not reach the entry cannot answer; a low-rank or kernel approximation
blurs the match.
"""

from __future__ import annotations

import random

from tasks._base import IGNORE, PAD, Example, GeneratedTask

FIRST_QUERY = PAD + 1  # query tokens: one per key; then entry tokens: one per (key, value)


def vocab_size_for(num_keys: int, num_values: int) -> int:
    """PAD, a query token per key, an entry token per (key, value)."""
    return FIRST_QUERY + num_keys + num_keys * num_values


def entry_and_query_slots(seq_len: int, min_distance: int) -> tuple[range, range]:
    """Where entries and queries may sit: halves of the sequence, or two ends ``min_distance`` apart."""
    if not 0 <= min_distance <= seq_len - 2:
        raise ValueError(f"min_distance={min_distance} must be in [0, seq_len - 2 = {seq_len - 2}]")
    entries = (seq_len - min_distance) // 2
    return range(entries), range(entries + min_distance, seq_len)


def generate_example(
    rng: random.Random,
    *,
    seq_len: int,
    num_keys: int,
    num_values: int,
    num_pairs: int,
    num_queries: int,
    min_distance: int = 0,
) -> tuple[list[int], list[int]]:
    """Token ids and per-position labels (the value's index at the queries, ``IGNORE`` elsewhere)."""
    entry_slots, query_slots = entry_and_query_slots(seq_len, min_distance)
    if not 1 <= num_pairs <= min(num_keys, len(entry_slots)):
        raise ValueError(
            f"num_pairs={num_pairs} must be in [1, min(num_keys={num_keys}, entry slots={len(entry_slots)})] "
            f"(entry slots: (seq_len - min_distance) / 2 with seq_len={seq_len}, min_distance={min_distance})"
        )
    if not 1 <= num_queries <= min(num_pairs, len(query_slots)):
        raise ValueError(
            f"num_queries={num_queries} must be in [1, min(num_pairs={num_pairs}, query slots={len(query_slots)})]"
        )
    keys = rng.sample(range(num_keys), num_pairs)
    values = [rng.randrange(num_values) for _ in keys]
    tokens = [PAD] * seq_len
    labels = [IGNORE] * seq_len
    first_entry = FIRST_QUERY + num_keys
    for position, key, value in zip(rng.sample(entry_slots, num_pairs), keys, values, strict=True):
        tokens[position] = first_entry + key * num_values + value
    for position, pair in zip(
        rng.sample(query_slots, num_queries), rng.sample(range(num_pairs), num_queries), strict=True
    ):
        tokens[position] = FIRST_QUERY + keys[pair]
        labels[position] = values[pair]
    return tokens, labels


class Lookup(GeneratedTask):
    """One-hop key lookup over the whole context, scored at the queries; causal or bidirectional."""

    head = "token"

    def __init__(
        self,
        *,
        seq_len: int = 256,
        num_keys: int = 4,
        num_values: int = 8,
        num_pairs: int = 4,
        num_queries: int = 4,
        min_distance: int = 0,
        causal: bool = True,
        **common,
    ) -> None:
        super().__init__(**common)
        self.seq_len, self.vocab_size, self.num_classes = seq_len, vocab_size_for(num_keys, num_values), num_values
        self.causal = causal
        self.num_keys, self.num_values, self.num_pairs, self.num_queries = num_keys, num_values, num_pairs, num_queries
        self.min_distance = min_distance
        self.draw(random.Random(0))  # bad combinations fail here, before any work

    def draw(self, rng: random.Random) -> Example:
        return generate_example(
            rng,
            seq_len=self.seq_len,
            num_keys=self.num_keys,
            num_values=self.num_values,
            num_pairs=self.num_pairs,
            num_queries=self.num_queries,
            min_distance=self.min_distance,
        )
