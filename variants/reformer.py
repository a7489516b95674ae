"""Reformer's LSH attention (Kitaev et al. 2020, "Reformer: The Efficient Transformer").

Each of ``n_hashes`` rounds hashes queries and keys with a random rotation into
``n / bucket_size`` buckets (``argmax([x R; -x R])``, angular LSH), sorts each by
(bucket, position), cuts the sorted sequence into chunks of ``bucket_size`` and
lets every query chunk attend to the key chunk at the same place and the one
before it (the first chunk of a round looks back at the last chunk of the round
before, as in the reference). Keys are unit-normalized, attention to a query's
own position gets a large negative logit (used only when nothing else is
there), and the rounds' outputs are combined by their log-sum-exps. Time and
memory O(n * n_hashes * bucket_size); each round runs under activation
checkpointing, so training keeps only the inputs and one output per round.

The paper shares queries and keys (``qk``); the contract hands a variant
separate ``q`` and ``k``, so queries hash and sort by ``q`` and keys by ``k``
with the same rotations. With ``k = q`` this is the reference exactly
(``reformer-pytorch``'s ``LSHAttention``, checked in the tests). Rotations are
drawn once per number of buckets from ``seed`` (the reference draws fresh ones
every call), so outputs are reproducible.

Not causal: a causal mask hides future keys, but which past keys share a
query's chunk depends on how the future tokens hash (they shift the sorted
chunk boundaries), so past outputs change with the future; the contract's
no-leak test fails, and ``build`` refuses ``causal=True``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import variants

SELF_LOGIT = -5e4  # the reference's value for attention to oneself: only used when no other key is allowed


@variants.register("reformer")
class ReformerAttention(variants.Attention):
    """LSH attention: ``n_hashes`` rounds of bucketed, sorted, chunked attention: O(n h b)."""

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

    def hash_order(self, x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
        """``(BH, n_hashes, P)``: positions sorted by (bucket, position) in each round."""
        rotated = torch.einsum("bnd,drk->brnk", x, rotations.to(x.dtype))
        buckets = torch.cat([rotated, -rotated], dim=-1).argmax(dim=-1)  # (BH, R, P)
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
        q, k, v = (F.pad(t, (0, 0, 0, padded - seq)).flatten(0, 1) for t in (q, k, v))  # (BH, P, Dh)
        rotations = self.rotations(padded // b, q.device)
        order_q, order_k = self.hash_order(q, rotations), self.hash_order(k, rotations)
        outs, lses = [], []
        for r in range(self.n_hashes):
            previous_last = order_k[:, r - 1, -b:]  # round r - 1's last key chunk (r = 0: the last round's)
            args = (q, k, v, order_q[:, r], order_k[:, r], previous_last, valid)
            if torch.is_grad_enabled():  # backward recomputes the round: only its inputs and outputs are kept
                out, lse = checkpoint(self._round, *args, use_reentrant=False)
            else:
                out, lse = self._round(*args)
            outs.append(out)
            lses.append(lse)
        weights = torch.stack(lses).softmax(dim=0)  # (R, BH, P, 1): rounds combined by their log-sum-exps
        out = (torch.stack(outs) * weights).sum(dim=0)
        return out.view(batch, heads, padded, dim)[:, :, :seq]

    def _round(self, q, k, v, order_q, order_k, previous_last, valid):
        """One hashing round: ``(BH, P, Dh)`` output and ``(BH, P, 1)`` log-sum-exp, in original order."""
        bh, padded, dim = q.shape
        b = self.bucket_size
        chunks = padded // b

        def gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))

        key_pos = torch.cat([order_k, previous_last], dim=1)  # the sorted keys, then the wrapped look-back chunk
        keys = F.normalize(gather(k, key_pos), dim=-1)  # unit keys, as the reference
        values = gather(v, key_pos)

        def look_one_back(x: torch.Tensor) -> torch.Tensor:
            """``(BH, C, 2b, ...)``: each chunk's keys and the chunk before it (chunk 0: the appended one)."""
            own = x[:, :padded].view(bh, chunks, b, *x.shape[2:])
            back = torch.cat([x[:, padded:], x[:, : padded - b]], dim=1).view(bh, chunks, b, *x.shape[2:])
            return torch.cat([own, back], dim=2)

        keys, values, key_pos = look_one_back(keys), look_one_back(values), look_one_back(key_pos)
        queries = gather(q, order_q).view(bh, chunks, b, dim)
        query_pos = order_q.view(bh, chunks, b)
        dots = ((queries @ keys.transpose(-1, -2)) * dim**-0.5).float()  # (BH, C, b, 2b), softmax in fp32
        if valid is not None:
            key_ok = valid.gather(1, key_pos.flatten(1)).view_as(key_pos)
            dots = dots.masked_fill(~key_ok[:, :, None, :], torch.finfo(dots.dtype).min)
        dots = dots.masked_fill(query_pos[..., None] == key_pos[:, :, None, :], SELF_LOGIT)
        lse = dots.logsumexp(dim=-1, keepdim=True)
        probs = F.dropout(torch.exp(dots - lse), p=self.dropout_p).to(values.dtype)
        sorted_out = (probs @ values).view(bh, padded, dim)
        undo = order_q.argsort(dim=-1)
        return gather(sorted_out, undo), gather(lse.view(bh, padded, 1).to(q.dtype), undo)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bucket_size={self.bucket_size}, n_hashes={self.n_hashes}, seed={self.seed}"
