"""What every generated task shares: token conventions, disjoint seeded splits, padding, loaders.

A task file (``tasks/mqar.py`` ...) holds its generator and a
:class:`GeneratedTask` subclass that says how to draw one example; the split
sizes, batch size and seed are handled here once.
"""

from __future__ import annotations

import random
from typing import ClassVar, Literal

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

PAD = 0  # token id of padding in every task
IGNORE = -100  # label of positions that are not scored (torch's cross-entropy ignore_index)

Example = tuple[list[int], list[int] | int]
SPLITS = ("test", "val", "train")  # drawing order: the held-out splits first


class GeneratedTask(pl.LightningDataModule):
    """Base class: subclasses say how to draw one example; this class does the rest.

    Splits are drawn from one seeded stream, test first, then validation, then
    train, and any example already drawn (same tokens) is redrawn, so the
    splits never overlap. Shorter examples are padded with ``PAD`` and the
    padding mask (True = real token) travels with every batch. Subclasses set
    ``seq_len``, ``vocab_size`` and ``num_classes`` and pass the keywords
    below through ``**common``.
    """

    head: ClassVar[Literal["classify", "token"]]
    byte_metrics: ClassVar[bool] = False  # test batches carry each byte's kind: bits per byte, hits, positions
    seq2seq: ClassVar[bool] = False  # batches (source, source mask, decoder input, labels): an encoder-decoder's
    causal: bool
    seq_len: int
    vocab_size: int
    num_classes: int

    def __init__(
        self, *, num_train: int = 20_000, num_val: int = 500, num_test: int = 1_000, batch_size: int = 64, seed: int = 0
    ) -> None:
        super().__init__()
        for key, value in (
            ("num_train", num_train),
            ("num_val", num_val),
            ("num_test", num_test),
            ("batch_size", batch_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key}={value!r} is out of range; allowed: integers in [1, inf)")
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
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
        for split in SPLITS:
            self._data[split] = self._to_tensors(self._draw_unique(rng, self.sizes[split], seen, split))

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
        train, other = self.dataset("train").tensors[-1], self.dataset(split).tensors[-1]  # the labels
        train, other = train[train != IGNORE], other[other != IGNORE]
        majority = train.bincount().argmax()
        return (other == majority).float().mean().item()
