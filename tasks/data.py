"""Generated sequence tasks as LightningDataModules: seeded, padded, with disjoint splits."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from tasks import listops, mqar, selective_copy

PAD = 0
IGNORE = -100

Example = tuple[list[int], list[int] | int]


@dataclass(frozen=True)
class Splits:
    train: int
    val: int
    test: int


class GeneratedTask(pl.LightningDataModule):
    """Base class: subclasses say how to draw one example; this class does the rest.

    Splits are drawn from one seeded stream, test first, then validation, then
    train, and any example already drawn (same tokens) is redrawn, so the
    splits never overlap. Shorter examples are padded with ``PAD`` and the
    padding mask (True = real token) travels with every batch.
    """

    head: Literal["classify", "token"]
    causal: bool

    def __init__(
        self, *, seq_len: int, vocab_size: int, num_classes: int, splits: Splits, batch_size: int, seed: int
    ) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.vocab_size = vocab_size
        self.num_classes = num_classes
        self.splits = splits
        self.batch_size = batch_size
        self.seed = seed
        self._data: dict[str, TensorDataset] = {}

    def draw(self, rng: random.Random) -> Example:
        raise NotImplementedError

    @property
    def name(self) -> str:
        return type(self).__name__

    def setup(self, stage: str | None = None) -> None:
        if self._data:
            return
        rng = random.Random(self.seed)
        seen: set[tuple[int, ...]] = set()
        for split in ("test", "val", "train"):
            examples = self._draw_unique(rng, getattr(self.splits, split), seen, split)
            self._data[split] = self._to_tensors(examples)

    def _draw_unique(self, rng: random.Random, count: int, seen: set, split: str) -> list[Example]:
        examples = []
        attempts = 0
        while len(examples) < count:
            attempts += 1
            if attempts > 20 * count + 1000:
                raise ValueError(
                    f"{self.name}: only {len(examples)} distinct {split} examples after {attempts} draws; "
                    "the task's space is too small for the requested split sizes"
                )
            tokens, label = self.draw(rng)
            key = tuple(tokens) if self.head == "classify" else (*tokens, *label)
            if key in seen:
                continue
            seen.add(key)
            examples.append((tokens, label))
        return examples

    def _to_tensors(self, examples: list[Example]) -> TensorDataset:
        count = len(examples)
        tokens = torch.full((count, self.seq_len), PAD, dtype=torch.long)
        mask = torch.zeros(count, self.seq_len, dtype=torch.bool)
        if self.head == "classify":
            labels = torch.empty(count, dtype=torch.long)
        else:
            labels = torch.full((count, self.seq_len), IGNORE, dtype=torch.long)
        for i, (toks, label) in enumerate(examples):
            tokens[i, : len(toks)] = torch.tensor(toks)
            mask[i, : len(toks)] = True
            if self.head == "classify":
                labels[i] = label
            else:
                labels[i, : len(label)] = torch.tensor(label)
        return TensorDataset(tokens, mask, labels)

    def dataset(self, split: str) -> TensorDataset:
        self.setup()
        return self._data[split]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.dataset(split), batch_size=self.batch_size, shuffle=shuffle, generator=generator)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def majority_baseline(self, split: str = "test") -> float:
        """Accuracy of always predicting the most common label of the train split."""
        train, other = self.dataset("train").tensors[2], self.dataset(split).tensors[2]
        train, other = train[train != IGNORE], other[other != IGNORE]
        majority = train.bincount().argmax()
        return (other == majority).float().mean().item()


class ListOps(GeneratedTask):
    """LRA ListOps: classify the value (0-9) of a nested MAX/MIN/MED/SM expression."""

    head = "classify"
    causal = False

    def __init__(
        self,
        *,
        seq_len: int = 512,
        min_len: int = 32,
        max_depth: int = 10,
        max_args: int = 10,
        num_train: int = 20_000,
        num_val: int = 1_000,
        num_test: int = 1_000,
        batch_size: int = 32,
        seed: int = 0,
    ) -> None:
        super().__init__(
            seq_len=seq_len,
            vocab_size=listops.VOCAB_SIZE,
            num_classes=listops.NUM_CLASSES,
            splits=Splits(num_train, num_val, num_test),
            batch_size=batch_size,
            seed=seed,
        )
        if not 1 <= min_len <= seq_len:
            raise ValueError(f"min_len={min_len} must be in [1, seq_len={seq_len}]")
        self.min_len, self.max_depth, self.max_args = min_len, max_depth, max_args

    def draw(self, rng: random.Random) -> Example:
        return listops.generate_example(
            rng, min_len=self.min_len, max_len=self.seq_len, max_depth=self.max_depth, max_args=self.max_args
        )


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
        num_train: int = 20_000,
        num_val: int = 500,
        num_test: int = 1_000,
        batch_size: int = 64,
        causal: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(
            seq_len=seq_len,
            vocab_size=vocab_size,
            num_classes=vocab_size,
            splits=Splits(num_train, num_val, num_test),
            batch_size=batch_size,
            seed=seed,
        )
        self.causal = causal
        self.num_pairs, self.num_queries = num_pairs, num_queries
        self.draw(random.Random(0))  # bad combinations fail here, before any work

    def draw(self, rng: random.Random) -> Example:
        return mqar.generate_example(
            rng,
            seq_len=self.seq_len,
            vocab_size=self.vocab_size,
            num_pairs=self.num_pairs,
            num_queries=self.num_queries,
        )


class SelectiveCopy(GeneratedTask):
    """Copy the scattered data tokens, in order, into the answer slots."""

    head = "token"
    causal = True

    def __init__(
        self,
        *,
        seq_len: int = 256,
        vocab_size: int = 16,
        num_data: int = 8,
        num_train: int = 20_000,
        num_val: int = 500,
        num_test: int = 1_000,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__(
            seq_len=seq_len,
            vocab_size=vocab_size,
            num_classes=vocab_size,
            splits=Splits(num_train, num_val, num_test),
            batch_size=batch_size,
            seed=seed,
        )
        self.num_data = num_data
        self.draw(random.Random(0))

    def draw(self, rng: random.Random) -> Example:
        return selective_copy.generate_example(
            rng, seq_len=self.seq_len, vocab_size=self.vocab_size, num_data=self.num_data
        )


TASKS: dict[str, Callable[..., GeneratedTask]] = {
    "listops": ListOps,
    "mqar": MQAR,
    "selective_copy": SelectiveCopy,
}
