"""Byte-level language modelling on real text: the Python standard library, or a folder of the user's files.

The question a user brings is "how much quality do I give up on my data?", and the papers behind these
variants answer it with bits per character on real text. No download is possible or needed: every Python
installation carries a corpus written by hundreds of people, its standard library (about 12.6 MB of
non-test source on Python 3.11), full of long-range repeats (an identifier defined far above its use),
which is what separates attention from fixed-state mixers. ``corpus=PATH`` reads any folder instead.

* **Split by file**, deterministically: a hash of each file's path relative to the corpus puts 1 file in 20
  in test, 1 in 20 in validation, the rest in train, so no test byte is ever trained on.
* **Sequences** of ``seq_len + 1`` bytes are cut from within one file (non-overlapping windows; files
  shorter than a window are left out), the model predicts each byte from those before it (vocabulary 256).
* **Recall hits** (Zoology's split of the loss, for bytes): a predicted byte is a hit when the ``ngram``-byte
  string it completes occurred earlier in the same sequence; a *far* hit when that string's latest earlier
  occurrence ends more than ``far`` bytes back (beyond a 64-byte window), else a *near* hit. Bits per byte
  are reported on far hits, near hits and the other bytes.
* The corpus's **digest** (every file's relative path and content), file and byte counts are part of every
  record and of the sweep point's identity, so two corpora or two Python versions never mix.
"""

from __future__ import annotations

import hashlib
import math
import os
import sysconfig
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import TensorDataset

from tasks._base import GeneratedTask

OTHER, NEAR_HIT, FAR_HIT = 0, 1, 2  # the kind of each predicted byte (test split)
KINDS = {"other": OTHER, "near": NEAR_HIT, "far": FAR_HIT}
SPLIT_OF_20 = {0: "test", 1: "val"}  # hash of the relative path mod 20; every other residue is train
SKIPPED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
STDLIB = "stdlib"  # corpus=null: the running interpreter's standard library


class Corpus(NamedTuple):
    """A folder's files as bytes, by relative path, with the digest that identifies them."""

    label: str
    files: dict[str, bytes]
    digest: str

    @property
    def num_bytes(self) -> int:
        return sum(len(data) for data in self.files.values())


def stdlib_root() -> Path:
    """The running interpreter's standard library (``Lib/`` of the Python that runs the benchmark)."""
    return Path(sysconfig.get_paths()["stdlib"])


def walk_files(root: Path) -> list[Path]:
    """Every file under ``root`` in sorted order, without descending into hidden folders, tests and installed
    packages (the standard library's ``site-packages`` holds torch itself)."""
    found = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and d not in SKIPPED_DIRS)
        found += [Path(folder) / name for name in sorted(names) if not name.startswith(".")]
    return [path for path in found if path.is_file()]


def _is_text(data: bytes) -> bool:
    return b"\0" not in data[:8192]  # a NUL byte near the start: a binary file (image, archive, bytecode)


@cache
def load_corpus(corpus: str | None) -> Corpus:
    """The files of ``corpus`` (a folder), or of the standard library (``.py`` files, tests and installed
    packages left out); raises ``ValueError`` naming the path where it is missing, empty or unreadable."""
    stdlib = corpus is None
    root = stdlib_root() if stdlib else Path(corpus).expanduser()
    where = f"task.corpus={corpus}" if not stdlib else f"the standard library at {root}"
    if not root.is_dir():
        raise ValueError(f"{where}: not a folder; give task.corpus=PATH of a folder of text or code files")
    files: dict[str, bytes] = {}
    digest = hashlib.sha256()
    for path in walk_files(root):
        relative = path.relative_to(root)
        if stdlib and (path.suffix != ".py" or relative.name.startswith("test_")):
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue  # one unreadable file is left out; a corpus with none readable fails below
        if not data or not _is_text(data):
            continue
        files[relative.as_posix()] = data
        digest.update(relative.as_posix().encode() + b"\0" + hashlib.sha256(data).digest())
    if not files:
        raise ValueError(f"{where}: no readable, non-empty text files in it; give a folder of text or code")
    label = f"Python {sysconfig.get_python_version()} standard library" if stdlib else str(root)
    return Corpus(label, files, digest.hexdigest()[:16])


def split_of(relative_path: str) -> str:
    """``train``, ``val`` or ``test`` for a file, from a hash of its relative path (the same on any machine)."""
    residue = int.from_bytes(hashlib.sha256(relative_path.encode()).digest()[:8], "big") % 20
    return SPLIT_OF_20.get(residue, "train")


def windows(data: bytes, length: int) -> list[bytes]:
    """Non-overlapping windows of ``length`` bytes from the start of one file (a shorter tail is dropped)."""
    return [data[start : start + length] for start in range(0, len(data) - length + 1, length)]


def recall_kinds(window: bytes, *, ngram: int, far: int) -> list[int]:
    """For each predicted byte ``window[t + 1]`` (t = 0 .. len - 2): ``FAR_HIT``, ``NEAR_HIT`` or ``OTHER``.

    A hit completes an ``ngram``-byte string whose latest earlier occurrence in the window ends before it;
    far when it ended more than ``far`` bytes back.
    """
    kinds = [OTHER] * (len(window) - 1)
    last_end: dict[bytes, int] = {}
    for end in range(ngram - 1, len(window)):
        gram = window[end - ngram + 1 : end + 1]
        previous = last_end.get(gram)
        if previous is not None and end >= 1:
            kinds[end - 1] = FAR_HIT if end - previous > far else NEAR_HIT
        last_end[gram] = end
    return kinds


def entropy_bits(counts: torch.Tensor) -> float:
    """Shannon entropy in bits of a histogram."""
    p = counts[counts > 0].double() / counts.sum()
    return float(-(p * p.log2()).sum())


def evenly(items: list[Any], count: int) -> list[Any]:
    """``count`` items spread evenly over ``items`` (all of them when there are fewer): no seed, every run alike."""
    if len(items) <= count:
        return items
    step = len(items) / count
    return [items[math.floor(i * step)] for i in range(count)]


class Text(GeneratedTask):
    """Next-byte prediction on a folder of files (default: the standard library), split by file."""

    head = "token"
    causal = True
    byte_metrics = True

    def __init__(
        self,
        *,
        seq_len: int = 256,
        corpus: str | None = None,
        ngram: int = 4,
        far: int = 64,
        num_train: int = 200_000,
        num_val: int = 64,
        num_test: int = 256,
        batch_size: int = 16,
        seed: int = 0,
    ) -> None:
        super().__init__(num_train=num_train, num_val=num_val, num_test=num_test, batch_size=batch_size, seed=seed)
        for key, value, low in (("seq_len", seq_len, 2), ("ngram", ngram, 2), ("far", far, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{key}={value!r} is out of range; allowed: integers in [{low}, inf)")
        self.seq_len, self.vocab_size, self.num_classes = seq_len, 256, 256
        self.corpus, self.ngram, self.far = corpus, ngram, far
        self.source = load_corpus(corpus)  # a missing or empty corpus fails here, before any work
        per_split = self._windows()
        empty = [split for split, found in per_split.items() if not found]
        if empty:
            raise ValueError(
                f"task.corpus={corpus or STDLIB}: no {' or '.join(empty)} file of at least seq_len + 1 = "
                f"{seq_len + 1} bytes ({len(self.source.files)} files, split 1 in 20 each by path); "
                "give a folder with more or longer files, or a shorter seq_len"
            )

    @property
    def name(self) -> str:
        return "Text"

    def identity(self) -> dict[str, Any]:
        """What the corpus is: its label, digest, file and byte counts (part of a sweep point's identity)."""
        return {
            "corpus": self.source.label,
            "corpus_digest": self.source.digest,
            "corpus_files": len(self.source.files),
            "corpus_bytes": self.source.num_bytes,
        }

    def _windows(self) -> dict[str, list[bytes]]:
        found: dict[str, list[bytes]] = {"train": [], "val": [], "test": []}
        for relative, data in self.source.files.items():
            found[split_of(relative)] += windows(data, self.seq_len + 1)
        return found

    def setup(self, stage: str | None = None) -> None:
        if self._data:
            return
        per_split = self._windows()
        for split in ("train", "val", "test"):
            chosen = evenly(per_split[split], self.sizes[split])
            joined = bytearray(b"".join(chosen))
            as_tensor = torch.frombuffer(joined, dtype=torch.uint8).long().view(len(chosen), self.seq_len + 1)
            tokens, labels = as_tensor[:, :-1].contiguous(), as_tensor[:, 1:].contiguous()
            mask = torch.ones_like(tokens, dtype=torch.bool)
            if split == "test":
                kinds = torch.tensor([recall_kinds(w, ngram=self.ngram, far=self.far) for w in chosen])
                self._data[split] = TensorDataset(tokens, mask, labels, kinds)
            else:
                self._data[split] = TensorDataset(tokens, mask, labels)

    def test_statistics(self) -> dict[str, Any]:
        """The trivial baseline and the make-up of the test split: unigram entropy, bytes, share of each kind."""
        _, _, labels, kinds = self.dataset("test").tensors
        shares = {f"test_share_{name}": float((kinds == kind).float().mean()) for name, kind in KINDS.items()}
        return {
            "unigram_entropy_bits": entropy_bits(labels.flatten().bincount(minlength=256)),
            "test_bytes": labels.numel(),
            "recall_ngram": self.ngram,
            "recall_far": self.far,
            **shares,
        }

    def majority_baseline(self, split: str = "test") -> float:
        """Accuracy of always predicting the train split's most common byte (the labels are the third tensor)."""
        train, other = self.dataset("train").tensors[2], self.dataset(split).tensors[2]
        return (other == train.flatten().bincount().argmax()).float().mean().item()
