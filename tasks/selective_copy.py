"""Selective copying (Gu & Dao 2023, "Mamba", section 3.1; Jing et al. 2019).

``num_data`` data tokens are scattered at random positions in a run of noise
tokens; after it come ``num_data`` answer slots, and the model must emit the
data tokens in their original order, one per slot. Unlike MQAR (look up a key,
copy its neighbour) this needs *ordered*, content-aware selection over the whole
context: a model must count which data token comes i-th, however far apart
they lie. Local windows cannot span the gap; low-rank or kernel mixtures blur
the order. Trained causally per token, scored only at the answer slots.
"""

from __future__ import annotations

import random

from tasks._base import IGNORE, PAD, Example, GeneratedTask

NOISE = PAD + 1
ANSWER = 2
FIRST_DATA = 3


def generate_example(
    rng: random.Random, *, seq_len: int, vocab_size: int, num_data: int
) -> tuple[list[int], list[int]]:
    """Token ids and per-position labels (``IGNORE`` except at the answer slots)."""
    if vocab_size <= FIRST_DATA:  # PAD, NOISE and ANSWER come first
        raise ValueError(f"vocab_size={vocab_size} must exceed {FIRST_DATA} (pad, noise and answer tokens)")
    context = seq_len - num_data
    if num_data < 1 or num_data > context:
        raise ValueError(f"num_data={num_data} must be in [1, seq_len / 2]; seq_len={seq_len}")
    data = [rng.randrange(FIRST_DATA, vocab_size) for _ in range(num_data)]
    tokens = [NOISE] * context + [ANSWER] * num_data
    for position, token in zip(sorted(rng.sample(range(context), num_data)), data, strict=True):
        tokens[position] = token
    labels = [IGNORE] * context + data
    return tokens, labels


class SelectiveCopy(GeneratedTask):
    """Copy the scattered data tokens, in order, into the answer slots."""

    head = "token"
    causal = True

    def __init__(self, *, seq_len: int = 256, vocab_size: int = 16, num_data: int = 8, **common) -> None:
        super().__init__(**common)
        self.seq_len, self.vocab_size, self.num_classes = seq_len, vocab_size, vocab_size
        self.num_data = num_data
        self.draw(random.Random(0))  # bad combinations fail here, before any work

    def draw(self, rng: random.Random) -> Example:
        return generate_example(rng, seq_len=self.seq_len, vocab_size=self.vocab_size, num_data=self.num_data)
