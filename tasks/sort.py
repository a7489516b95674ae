"""Sorting, a sequence-to-sequence task for the encoder-decoder skeleton.

The source is ``seq_len`` tokens (``min_len`` to ``seq_len`` of them, the rest
padding) drawn from ``num_values`` values; the target is the same tokens in
ascending order. The i-th target token is the i-th smallest source token
wherever it sits, so the decoder needs content-based access across the whole
source (a position-based shortcut, as for reversing, does not exist), and
repeated values make it count. Trained teacher-forced (decoder input: BOS and
the target shifted right), scored per target token and as whole-sequence exact
match; the test split is scored by greedy generation (``runners.training``).
"""

from __future__ import annotations

import random
from typing import ClassVar

import torch
from torch.utils.data import TensorDataset

from tasks._base import IGNORE, PAD, Example, GeneratedTask

BOS = PAD + 1  # the decoder's first input token
FIRST_VALUE = BOS + 1


def generate_example(rng: random.Random, *, seq_len: int, min_len: int, num_values: int) -> Example:
    """Source tokens and their sorted target (both as token ids)."""
    if num_values < 2:
        raise ValueError(f"num_values={num_values} must be at least 2")
    if not 1 <= min_len <= seq_len:
        raise ValueError(f"min_len={min_len} must be in [1, seq_len={seq_len}]")
    length = rng.randint(min_len, seq_len)
    source = [rng.randrange(FIRST_VALUE, FIRST_VALUE + num_values) for _ in range(length)]
    return source, sorted(source)


class Sort(GeneratedTask):
    """Sort the source: an encoder-decoder task; batches are (source, source mask, decoder input, labels)."""

    head = "token"
    causal = True  # the decoder generates the target left to right
    seq2seq: ClassVar[bool] = True

    def __init__(self, *, seq_len: int = 32, min_len: int | None = None, num_values: int = 8, **common) -> None:
        super().__init__(**common)
        self.seq_len, self.num_values = seq_len, num_values
        self.min_len = seq_len if min_len is None else min_len
        self.vocab_size = self.num_classes = FIRST_VALUE + num_values
        self.draw(random.Random(0))  # bad combinations fail here, before any work

    def draw(self, rng: random.Random) -> Example:
        return generate_example(rng, seq_len=self.seq_len, min_len=self.min_len, num_values=self.num_values)

    def _to_tensors(self, examples: list[Example]) -> TensorDataset:
        count = len(examples)
        source = torch.full((count, self.seq_len), PAD, dtype=torch.long)
        decoder_in = torch.full((count, self.seq_len), PAD, dtype=torch.long)
        labels = torch.full((count, self.seq_len), IGNORE, dtype=torch.long)
        for i, (tokens, target) in enumerate(examples):
            source[i, : len(tokens)] = torch.tensor(tokens)
            decoder_in[i, : len(target)] = torch.tensor([BOS, *target[:-1]])
            labels[i, : len(target)] = torch.tensor(target)
        return TensorDataset(source, source != PAD, decoder_in, labels)
