"""ListOps (Nangia & Bowman 2018), as used by the Long Range Arena (Tay et al. 2020).

Nested prefix expressions over digits 0-9 with MAX, MIN, MED (median) and SM
(sum modulo 10), brackets as tokens, e.g. ``[MAX 2 9 [MIN 4 7 ] 0 ]`` -> 9.
The label is the expression's value (10 classes).
"""

from __future__ import annotations

import random
import statistics

from tasks._base import PAD, Example, GeneratedTask

DIGITS = {str(d): 1 + d for d in range(10)}  # "0".."9" -> 1..10
OPERATORS = {"[MAX": 11, "[MIN": 12, "[MED": 13, "[SM": 14}
CLOSE = {"]": 15}
VOCAB = {"<pad>": PAD} | DIGITS | OPERATORS | CLOSE
VOCAB_SIZE = len(VOCAB)
NUM_CLASSES = 10


def apply(op: str, args: list[int]) -> int:
    """Value of one operator over its evaluated arguments."""
    if op == "[MAX":
        return max(args)
    if op == "[MIN":
        return min(args)
    if op == "[MED":
        return int(statistics.median(args))  # LRA: int(np.median(...)), truncating halves
    if op == "[SM":
        return sum(args) % 10
    raise ValueError(f"unknown ListOps operator {op!r}")


def evaluate(tokens: list[str]) -> int:
    """Evaluate a tokenized expression with a stack (no recursion limit on depth)."""
    stack: list[tuple[str, list[int]]] = []
    result = None
    for token in tokens:
        if token in OPERATORS:
            stack.append((token, []))
        elif token == "]":
            if not stack:
                raise ValueError("unbalanced ']' in ListOps expression")
            op, args = stack.pop()
            if not args:
                raise ValueError(f"{op} has no arguments")
            value = apply(op, args)
            if stack:
                stack[-1][1].append(value)
            else:
                result = value
        elif token in DIGITS:
            if stack:
                stack[-1][1].append(int(token))
            else:
                result = int(token)
        else:
            raise ValueError(f"unknown ListOps token {token!r}")
    if stack or result is None:
        raise ValueError("unbalanced ListOps expression")
    return result


def generate_tree(rng: random.Random, *, depth: int, max_depth: int, max_args: int) -> list[str]:
    """One random expression as tokens, by the LRA generator's rule.

    Below ``max_depth`` a node is an operator with probability 0.25 (the root
    always is), otherwise a digit.
    """
    if depth >= max_depth or (depth > 0 and rng.random() >= 0.25):
        return [str(rng.randrange(10))]
    op = rng.choice(list(OPERATORS))
    tokens = [op]
    for _ in range(rng.randint(2, max_args)):
        tokens += generate_tree(rng, depth=depth + 1, max_depth=max_depth, max_args=max_args)
    return [*tokens, "]"]


def generate_example(
    rng: random.Random, *, min_len: int, max_len: int, max_depth: int, max_args: int, max_tries: int = 10_000
) -> tuple[list[int], int]:
    """Token ids and label of one expression whose length lies in ``[min_len, max_len]``.

    Rejection sampling, as in the LRA generator: draw trees until one fits.
    """
    for _ in range(max_tries):
        tokens = generate_tree(rng, depth=0, max_depth=max_depth, max_args=max_args)
        if min_len <= len(tokens) <= max_len:
            return [VOCAB[t] for t in tokens], evaluate(tokens)
    raise ValueError(
        f"no ListOps expression of length {min_len}-{max_len} in {max_tries} tries with "
        f"max_depth={max_depth}, max_args={max_args}; widen the length range or raise max_depth/max_args"
    )


class ListOps(GeneratedTask):
    """LRA ListOps: classify the value (0-9) of a nested MAX/MIN/MED/SM expression."""

    head = "classify"
    causal = False
    vocab_size = VOCAB_SIZE
    num_classes = NUM_CLASSES

    def __init__(
        self,
        *,
        seq_len: int = 512,
        min_len: int = 32,
        max_depth: int = 10,
        max_args: int = 10,
        batch_size: int = 32,
        **common,
    ) -> None:
        super().__init__(batch_size=batch_size, **common)
        if not 1 <= min_len <= seq_len:
            raise ValueError(f"min_len={min_len} must be in [1, seq_len={seq_len}]")
        self.seq_len, self.min_len, self.max_depth, self.max_args = seq_len, min_len, max_depth, max_args

    def draw(self, rng: random.Random) -> Example:
        return generate_example(
            rng, min_len=self.min_len, max_len=self.seq_len, max_depth=self.max_depth, max_args=self.max_args
        )
