"""Reformer's LSH attention (Kitaev et al. 2020, "Reformer: The Efficient Transformer").

Each of ``n_hashes`` rounds hashes queries and keys with a random rotation into
``n / bucket_size`` buckets (``argmax([x R; -x R])``, angular LSH), sorts each by
(bucket, position), cuts the sorted sequence into chunks of ``bucket_size`` and
lets every query chunk attend to the key chunk at the same place and the one
before it (the first chunk of a round looks back at the last chunk of the round
before, as in the reference). Keys are unit-normalized, attention to a query's
own position gets a large negative logit (used only when nothing else is
there), and the rounds' outputs are combined by their log-sum-exps. Time and
memory O(n * n_hashes * bucket_size); the kernel (``variants/_lsh.py``) is a
custom autograd function that recomputes each chunk's scores in backward, so
training keeps only q, k, v, the output and one log-sum-exp per round and query.

The paper shares queries and keys (``qk``); the contract hands a variant
separate ``q`` and ``k``, so queries hash and sort by ``q`` and keys by ``k``
with the same rotations. With ``k = q`` this is the reference exactly
(``reformer-pytorch``'s ``LSHAttention``, checked in the tests). Rotations are
drawn once per number of buckets from ``seed`` (the reference draws fresh ones
every call), so outputs are reproducible.

Padding is neutral: padded keys and queries (``mask`` False, and the zero rows
that round the length up to whole bucket pairs) take no part in bucketing.
They get a bucket after every real one, so each round sorts them behind every
real position, and the sorted order, the chunks and the look-backs of the real
positions are the same whatever the padding holds. (The padded length still
sets the number of buckets, ``P / bucket_size`` as in the reference, so
padding a batch to another length rehashes it.) reformer-pytorch
hashes padded positions like real ones and only masks their scores, so a padded
key can push a real key out of a real query's chunk; without padding the two
agree exactly.

Not causal: a causal mask hides future keys, but which past keys share a
query's chunk depends on how the future tokens hash (they shift the sorted
chunk boundaries), so past outputs change with the future; the contract's
no-leak test fails, and ``build`` refuses ``causal=True``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import variants
from variants._lsh import LshLayout, lsh_attention


def _bucket(rotated: torch.Tensor) -> torch.Tensor:
    """``argmax([x R; -x R])`` without the concatenation (at n = 2048 it and the rotations of every round at once
    were 12 MiB, the core's largest buffer): the first maximum of ``x R``, or half plus the first minimum."""
    (top, top_at), (low, low_at) = rotated.max(dim=-1), rotated.min(dim=-1)  # values and first indices at once
    return torch.where(top >= -low, top_at, low_at + rotated.shape[-1])  # a tie goes to the first half, as argmax's


@variants.register("reformer")
class ReformerAttention(variants.Attention):
    """LSH attention: ``n_hashes`` rounds of bucketed, sorted, chunked attention: O(n h b)."""

    family = "sparse"
    supports_causal = False
    budget = ("n_hashes", (1, 2, 4, 8))

    def __init__(self, *, bucket_size: int = 64, n_hashes: int = 4, seed: int = 0, **common) -> None:
        super().__init__(**common)
        variants.check_range("bucket_size", bucket_size, low=1)
        variants.check_range("n_hashes", n_hashes, low=1)
        self.bucket_size = bucket_size
        self.n_hashes = n_hashes
        self.seed = seed
        self._rotations: dict[tuple[int, str], torch.Tensor] = {}

    def rotations(self, n_buckets: int, device: torch.device) -> torch.Tensor:
        """``(Dh, n_hashes, n_buckets / 2)`` random rotations, drawn once per number of buckets from ``seed``."""
        key = (n_buckets, str(device))
        if key not in self._rotations:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + n_buckets)
            shape = (self.dim_head, self.n_hashes, n_buckets // 2)
            self._rotations[key] = torch.randn(shape, generator=generator).to(device)
        return self._rotations[key]

    def hash_order(self, x: torch.Tensor, rotations: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """``(BH, n_hashes, P)``: positions sorted by (bucket, position) in each round, padding (``~valid``) last."""
        with torch.no_grad():  # buckets are integers: no graph through the rotations
            buckets = torch.stack([_bucket(x @ rotations[:, r].to(x.dtype)) for r in range(rotations.shape[1])], 1)
        if valid is not None:  # a bucket after every real one: padding never shares a sorted slot with a real token
            buckets = buckets.masked_fill(~valid[:, None, :], 2 * rotations.shape[-1])
        positions = torch.arange(x.shape[1], device=x.device)
        return (buckets * x.shape[1] + positions).argsort(dim=-1)

    def attend(self, q, k, v, mask):
        batch, heads, seq, dim = q.shape
        b = self.bucket_size
        padded = seq + (-seq % (2 * b))  # an even number of buckets, as the reference requires
        valid = None
        if mask is not None or padded != seq:
            valid = torch.ones(batch, seq, dtype=torch.bool, device=q.device) if mask is None else mask
            valid = F.pad(valid, (0, padded - seq), value=False).repeat_interleave(heads, dim=0)  # (BH, P)
        if padded != seq:  # a copy of each input only where the length needs it
            q, k, v = (F.pad(t, (0, 0, 0, padded - seq)) for t in (q, k, v))
        q, k, v = (t.flatten(0, 1) for t in (q, k, v))  # (BH, P, Dh)
        rotations = self.rotations(padded // b, q.device)
        orders = (self.hash_order(x, rotations, valid).int() for x in (q, k))
        out = lsh_attention(q, k, v, LshLayout(*orders, b, valid), dropout_p=self.dropout_p)
        return out.view(batch, heads, padded, dim)[:, :, :seq]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bucket_size={self.bucket_size}, n_hashes={self.n_hashes}, seed={self.seed}"
