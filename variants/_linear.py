"""Linear (feature-map) attention that keeps O(n) memory: the kernel of Performer and the linear family.

Attention is ``phi(q_i) . sum_j phi(k_j) v_j^T`` normalized by
``phi(q_i) . sum_j phi(k_j)``, over all keys (bidirectional) or keys up to
``i`` (causal). Feature matrices are ``(n, m)`` with ``m`` often larger than
the head dimension, so plain autograd, which keeps them for the backward pass,
needs several times the memory of the inputs. :func:`linear_attention` is a
custom autograd function that keeps only q, k, v, the row normalizers, the
key summary (causally: the output, and for autograd feature maps the summary
before each group while those are small, :data:`BOUNDARY_INPUTS`, so the
backward is one pass), and recomputes features chunk by chunk in the backward
pass; the gradients of the feature maps themselves come from autograd on one
chunk at a time (or closed forms).

The causal scan takes its chunks in groups (:data:`GROUP_ELEMENTS`): every
chunk of a group at once, as batched products over a chunk dimension, each
chunk's view of the earlier chunks' summaries as one product with a small
``(g, g)`` matrix, and a summary carried across groups in a loop. A loop over
single chunks ran ~40 small operators per chunk and was bound by their
overhead, not by its FLOPs.

Feature maps are given as two functions of a chunk of rows (and of the
learned ``parameters`` they read, passed after ``end``: their gradients are
pulled back chunk by chunk too, so a learned map keeps no projected copy of q
and k): ``query_features(q, start, end, *parameters)`` returns positive
features (a per-row factor is allowed: it cancels in the normalized ratio) and
``key_logits(k, start, end, *parameters)`` returns the *logarithm* of the key
features (``-inf`` for keys that must get no weight). Optionally, a third function
``pair_scores(q, k, start, end, *parameters)`` gives ``phi(q_i) . phi(k_j)`` of one
causal chunk's rows directly, when the kernel has a closed form far cheaper than
the ``m``-wide product (Based's Taylor map: ``1 + s + s^2 / 2`` from a 16-wide
``s``, where the products over its 153-273 features dominated the causal FLOPs).
The kernel exponentiates the key
logits with a stabilizer shared by all keys a query sees, which also cancels:
one global maximum (bidirectional), or a running maximum over the chunks seen
so far (causal), rescaling the prefix state when it grows, so no query's
features underflow because a later key is large.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

CHUNK_ELEMENTS = 2**17  # feature-matrix elements per chunk in the bidirectional passes (0.5 MiB in fp32) ...
MIN_ROWS = 256  # ... but at least this many rows: performer's 256 features in chunks of 64 rows trained 25% slower
# Elements a group of causal chunks holds at once in the backward pass, per (batch, head): 2^18 (8 MiB in fp32 at the
# default sweep's batch 2 x 4 heads; per head, not in all, so a larger batch does not make groups of fewer rows: at
# batch 4, n = 2048, causal performer trained 0.83x full with 2^21 elements in all, 0.93x with 2^18 per head) ...
GROUP_ELEMENTS = 2**18
GROUP_INPUTS = 8  # ... and at most this many q-sized tensors: at n = 384 a group of 8 MiB took causal performer's
# whole-model peak from 1.15x to 1.63x full's
LOG2E = 1.4426950408889634  # exp(x) = exp2(x log2(e))
BOUNDARY_INPUTS = 2.5  # the causal backward's one pass keeps summaries of at most this many q-sized tensors
TINY = 1e-30  # normalizers below this are clamped: a row whose features all underflowed gives zeros

FeatureFn = Callable[..., torch.Tensor]  # (rows, start, end, *parameters) -> (B, H, rows, features)
PairFn = Callable[..., torch.Tensor]  # (query rows, key rows, start, end, *parameters) -> (B, H, rows, rows)
VjpFn = Callable[..., tuple[torch.Tensor, tuple[torch.Tensor | None, ...]]]
PairVjpFn = Callable[..., tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor | None, ...]]]


def _row_chunks(length: int, rows: int) -> list[tuple[int, int]]:
    return [(start, min(start + rows, length)) for start in range(0, length, rows)]


def _stabilizer(logits: torch.Tensor, signed: bool) -> torch.Tensor:
    """Max over rows and features per (batch, head), ``(B, H, 1, 1)`` (per chunk of a causal group: ``(B, H, g, 1,
    1)``); finite even when every key is masked.

    Zero for signed features, which are used as they are.
    """
    if signed:
        return logits.new_zeros(*logits.shape[:-2], 1, 1)
    return logits.detach().amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(logits.dtype).min)


def exp_(x: torch.Tensor) -> torch.Tensor:
    """``exp`` in place, as ``exp2`` of ``x log2(e)``: on CPU ATen's vectorized ``exp2`` is 3-4x faster than its
    ``exp`` (AVX2 and AVX-512), and ``exp`` falls to a slow path, 10x slower, for arguments below -87 (the
    stabilized features of far keys). Relative error ~2e-6 against ``exp``'s 6e-8: float rounding for features
    that estimate a softmax."""
    return x.mul_(LOG2E).exp2_()


def _exp_(logits: torch.Tensor, scale: torch.Tensor, signed: bool) -> torch.Tensor:
    """Key features from key logits relative to ``scale``, in place (signed features: unchanged)."""
    return logits if signed else exp_(logits.sub_(scale))


@dataclass(frozen=True)
class AnalyticGradients:
    """Closed-form vector-Jacobian products of signed feature functions, used instead of autograd in the backward.

    Autograd pulls a chunk's feature gradient back through a graph built for that chunk, then
    ``autograd.grad``: for Based at 128 rows of 2 x 4 heads that cost 0.96 ms against 0.19 ms for its
    features alone. The kernels hand a closed form the features' gradient as two factors,
    ``left @ right^T`` (``left``: ``(B, H, rows, e)``, ``right``: ``(B, H, m, e)``; every feature
    gradient of the parallel forms is that product, with the normalizer as one more column), so the
    ``(rows, m)`` gradient need not be formed either.

    ``queries``/``keys``: ``(rows, start, end, left, right, *parameters) -> (grad of the rows, grads of
    the parameters)``, a grad ``None`` where a parameter gets none. ``pairs`` (causal, with
    ``pair_scores``): ``(query rows, key rows, start, end, grad of the pairs, *parameters) -> (grad of the
    query rows, of the key rows, grads of the parameters)``.
    """

    queries: VjpFn
    keys: VjpFn
    pairs: PairVjpFn


class _Maps:
    """The feature functions with their learned parameters, and the parameters' gradients as chunks add them."""

    def __init__(
        self,
        query_features: FeatureFn,
        key_logits: FeatureFn,
        parameters: tuple[torch.Tensor, ...],
        pair_scores: PairFn | None = None,
        analytic: AnalyticGradients | None = None,
    ):
        self.query_fn, self.key_fn, self.pair_fn = query_features, key_logits, pair_scores
        self.parameters, self.analytic = parameters, analytic
        self.leaves: tuple[torch.Tensor, ...] = ()  # the parameters as leaves of each chunk's graph (backward)
        self.grads: list[torch.Tensor | None] = [None] * len(parameters)

    def for_backward(self) -> _Maps:
        """A copy with leaves and no gradients yet: each backward pass (a retained graph may run two) starts at zero."""
        maps = _Maps(self.query_fn, self.key_fn, self.parameters, self.pair_fn, self.analytic)
        maps.leaves = tuple(p.detach().requires_grad_(p.requires_grad) for p in self.parameters)
        return maps

    def queries(self, x: torch.Tensor, start: int, end: int) -> torch.Tensor:
        return self.query_fn(x, start, end, *self.parameters)

    def keys(self, x: torch.Tensor, start: int, end: int) -> torch.Tensor:
        return self.key_fn(x, start, end, *self.parameters)

    def pairs(self, q_rows: torch.Tensor, k_rows: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """``(B, H, g, C, C)`` kernel values of each causal chunk's queries against its keys, lower triangle kept."""
        assert self.pair_fn is not None
        return self.pair_fn(q_rows, k_rows, start, end, *self.parameters).tril_()

    # Autograd: each chunk's features as the output of a graph on a fresh leaf, pulled back with autograd.grad.

    def with_grad(self, fn: FeatureFn, rows: torch.Tensor, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of some rows, the rows a fresh leaf (and the parameters) so their gradient can be pulled back."""
        leaf = rows.detach().requires_grad_()
        with torch.enable_grad():
            return leaf, fn(leaf, start, end, *self.leaves)

    def pull_back(self, leaf: torch.Tensor, features: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """The chunk's gradient; the parameters' gradients are added to :attr:`grads`."""
        return self.pull_back_all([leaf], [features], [grad])[0]

    def pull_back_all(
        self, inputs: list[torch.Tensor], outputs: list[torch.Tensor], grads: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Gradients of ``inputs`` (leaves) from several outputs in one backward pass; parameters' as above."""
        trainable = [i for i, p in enumerate(self.leaves) if p.requires_grad]
        pulled = torch.autograd.grad(outputs, [*inputs, *(self.leaves[i] for i in trainable)], grads, allow_unused=True)
        self._add(dict(zip(trainable, pulled[len(inputs) :], strict=True)))
        return list(pulled[: len(inputs)])

    # Closed forms (AnalyticGradients): no graph; the features' gradient comes as two factors.

    def pull_back_factored(
        self, which: int, rows: torch.Tensor, start: int, end: int, left: torch.Tensor, right: torch.Tensor
    ) -> torch.Tensor:
        """Gradient of query (``which=0``) or key (1) rows whose features' gradient is ``left @ right^T``."""
        assert self.analytic is not None
        vjp = self.analytic.keys if which else self.analytic.queries
        rows_grad, parameter_grads = vjp(rows, start, end, left, right, *self.parameters)
        self._add(dict(enumerate(parameter_grads)))
        return rows_grad

    def pull_back_pairs(
        self, q_rows: torch.Tensor, k_rows: torch.Tensor, start: int, end: int, grad: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients of causal chunks' query and key rows from the gradient of their pairs (lower triangle)."""
        assert self.analytic is not None
        dq, dk, parameter_grads = self.analytic.pairs(q_rows, k_rows, start, end, grad, *self.parameters)
        self._add(dict(enumerate(parameter_grads)))
        return dq, dk

    def _add(self, parameter_grads: dict[int, torch.Tensor | None]) -> None:
        for i, g in parameter_grads.items():
            if g is not None and self.parameters[i].requires_grad:
                self.grads[i] = g if self.grads[i] is None else self.grads[i] + g


def _with_column(x: torch.Tensor, column: torch.Tensor) -> torch.Tensor:
    """``x`` with one more last column: a feature gradient ``a @ b^T + c d^T`` as one product of two factors."""
    return torch.cat([x, column[..., None].expand(*x.shape[:-1], 1)], dim=-1)


def _with_ones(values: torch.Tensor) -> torch.Tensor:
    """Values with a column of ones: one product with the features then gives the summary and its normalizer row."""
    return _with_column(values, values.new_ones(()))


def _add_product(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``out += a @ b^T`` in place, with no ``out``-sized temporary (``out`` a fresh, contiguous ``(..., r, m)``)."""
    if not out.is_contiguous():
        return out.add_(a @ b.transpose(-2, -1))
    out.flatten(0, -3).baddbmm_(a.flatten(0, -3), b.flatten(0, -3).transpose(-2, -1))
    return out


def _normalized(numerator: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``numerator / den`` per row, the clamped normalizer (the forward's output, and the backward's rebuilt one)."""
    return numerator / den.clamp_min(TINY)[..., None]


def _normalizer_grads(
    grad_out: torch.Tensor, out: torch.Tensor, den: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients w.r.t. numerator and normalizer of ``out = num / den`` (none where ``den`` was clamped)."""
    d_num = _normalized(grad_out, den)
    d_den = -(grad_out * out).sum(dim=-1) / den.clamp_min(TINY)
    return d_num, d_den.masked_fill(den < TINY, 0.0)


def _empty_summary(v: torch.Tensor, num_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty key summary ``(B, H, Dh + 1, m)`` (the values' columns, then the normalizer's) and stabilizer
    ``(B, H, 1, 1)``."""
    batch, heads, _, dim = v.shape
    running = v.new_full((batch, heads, 1, 1), torch.finfo(v.dtype).min)
    return v.new_zeros(batch, heads, dim + 1, num_features), running


class _Bidirectional(torch.autograd.Function):
    """Every query over every key: one key summary ``values^T features`` with the normalizer as one more row, as in
    the causal scan (:func:`_scan_group`): each read of it, and each feature gradient, is one product, not a
    product beside a matrix-vector product and a broadcast sum over ``(rows, m)``."""

    @staticmethod
    def forward(ctx, q, k, v, maps: _Maps, num_features: int, signed: bool, *parameters):
        batch, heads, keys, _ = v.shape
        queries = q.shape[2]  # cross-attention: another length than the keys'
        rows = max(MIN_ROWS, CHUNK_ELEMENTS // (batch * heads * num_features))
        with torch.no_grad():
            summary, running = _empty_summary(v, num_features)
            for start, end in _row_chunks(keys, rows):  # keys: the summary, stabilized online
                logits = maps.keys(k[:, :, start:end], start, end)
                new_running = torch.maximum(running, _stabilizer(logits, signed))
                summary.mul_(torch.exp(running - new_running))
                key_feat = _exp_(logits, new_running, signed)
                values = _with_ones(v[:, :, start:end])
                _add_product(summary, values.transpose(-2, -1), key_feat.transpose(-2, -1))
                running = new_running
            out = v.new_empty(batch, heads, queries, v.shape[-1])
            den = v.new_empty(batch, heads, queries)
            for start, end in _row_chunks(queries, rows):  # queries
                read = maps.queries(q[:, :, start:end], start, end) @ summary.transpose(-2, -1)
                den[:, :, start:end] = read[..., -1]
                out[:, :, start:end] = _normalized(read[..., :-1], read[..., -1])
        ctx.save_for_backward(q, k, v, den, summary, running)  # not out: each chunk's is one product away
        ctx.maps, ctx.rows, ctx.signed = maps, rows, signed
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, den, summary, running = ctx.saved_tensors
        maps = ctx.maps.for_backward()
        grad_q, grad_k, grad_v = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        d_summary = torch.zeros_like(summary)
        analytic = maps.analytic is not None
        for start, end in _row_chunks(q.shape[2], ctx.rows):  # queries: dq, and the gradient of the key summary
            if analytic:
                with torch.no_grad():
                    features = maps.queries(q[:, :, start:end], start, end)
            else:
                leaf, query_feat = maps.with_grad(maps.query_fn, q[:, :, start:end], start, end)
                features = query_feat.detach()
            rows_den = den[:, :, start:end]
            out = _normalized(features @ summary[..., :-1, :].transpose(-2, -1), rows_den)
            d_rows = _with_column(*_normalizer_grads(grad_out[:, :, start:end], out, rows_den))  # (rows, Dh + 1)
            if analytic:  # the features' gradient d_rows @ summary, left as factors
                rows_grad = maps.pull_back_factored(0, q[:, :, start:end], start, end, d_rows, summary.mT)
            else:
                rows_grad = maps.pull_back(leaf, query_feat, d_rows @ summary)
            grad_q[:, :, start:end] = rows_grad
            _add_product(d_summary, d_rows.transpose(-2, -1), features.transpose(-2, -1))
        for start, end in _row_chunks(k.shape[2], ctx.rows):  # keys: dk and dv
            values = _with_ones(v[:, :, start:end])
            if analytic:  # signed: the key features are the logits
                with torch.no_grad():
                    key_feat = maps.keys(k[:, :, start:end], start, end)
                grad_v[:, :, start:end] = key_feat @ d_summary[..., :-1, :].transpose(-2, -1)
                grad_k[:, :, start:end] = maps.pull_back_factored(
                    1, k[:, :, start:end], start, end, values, d_summary.mT
                )
                continue
            leaf, logits = maps.with_grad(maps.key_fn, k[:, :, start:end], start, end)
            key_feat = _exp_(logits.detach().clone(), running, ctx.signed)
            grad_v[:, :, start:end] = key_feat @ d_summary[..., :-1, :].transpose(-2, -1)
            d_feat = values @ d_summary
            grad_k[:, :, start:end] = maps.pull_back(leaf, logits, d_feat if ctx.signed else d_feat.mul_(key_feat))
        return grad_q, grad_k, grad_v, None, None, None, *maps.grads


def _groups(length: int, chunk: int, per_group: int) -> list[tuple[int, int, int, int]]:
    """``(start, end, chunks, rows per chunk)`` of each group of the causal scan: ``per_group`` whole chunks at a
    time, and a last chunk shorter than ``chunk`` as a group of its own."""
    whole = length // chunk * chunk
    step = per_group * chunk
    groups = [(start, min(start + step, whole)) for start in range(0, whole, step)]
    groups = [(start, end, (end - start) // chunk, chunk) for start, end in groups]
    return groups + ([(whole, length, 1, length - whole)] if whole < length else [])


def chunks_per_group(length: int, dim: int, chunk: int, num_features: int, closed_form: bool) -> int:
    """How many causal chunks one group takes: as many as fit in what the backward pass holds at once per group,
    a few ``(rows, m)`` tensors (two with closed-form gradients, three through autograd: features, the graph's
    saved copy, their gradient) and two ``(C, C)`` blocks per chunk, within :data:`GROUP_ELEMENTS` and
    :data:`GROUP_INPUTS` q-sized tensors."""
    live = 2 if closed_form else 3
    budget = min(GROUP_ELEMENTS, GROUP_INPUTS * length * dim)  # per (batch, head)
    return max(1, budget // (chunk * (live * num_features + 2 * chunk)))


def _split(rows: torch.Tensor, chunks: int, size: int) -> torch.Tensor:
    """``(B, H, chunks * size, ...)`` rows of a group as ``(B, H, chunks, size, ...)``: every chunk at once."""
    return rows.unflatten(2, (chunks, size))


def _chunk_scales(logits: torch.Tensor, running: torch.Tensor | None, signed: bool) -> torch.Tensor:
    """``(B, H, g)``: the key stabilizer each chunk of a group uses, the running maximum over the chunks so far
    (``running``: the last one of the groups before, ``None`` for the first group)."""
    chunk_max = _stabilizer(logits, signed)[..., 0, 0]
    if signed:
        return chunk_max
    scales = chunk_max.cummax(dim=-1).values
    return scales if running is None else torch.maximum(running[..., None], scales)


def _earlier_weights(scales: torch.Tensor) -> torch.Tensor:
    """``(B, H, g, g)``: entry ``(c, c')`` rescales chunk ``c'``'s summary to chunk ``c``'s stabilizer where
    ``c' < c`` (``exp(scale_c' - scale_c) <= 1``), zero elsewhere; the transpose does so for later chunks."""
    return (scales[..., None, :] - scales[..., :, None]).tril_(-1).exp_().tril_(-1)


Carried = tuple[torch.Tensor, torch.Tensor]  # a summary (Dh + 1, m), normalizer row included; its stabilizer


def _scan_group(
    features: torch.Tensor, values: torch.Tensor, scales: torch.Tensor, carried: Carried | None, reverse: bool
) -> tuple[torch.Tensor, Carried]:
    """One group's step of a scan over chunk summaries ``features^T values``: what each chunk sees of the group's
    earlier chunks (``reverse``: later ones) and of the summary ``carried`` from the groups before (after) it, each
    relative to its chunk's stabilizer, ``(B, H, g, m, Dh + 1)``, as one product with a ``(g, g)`` matrix, not a
    loop; and what to carry on. ``values`` ``(B, H, g, C, Dh + 1)`` end in the normalizer's column (ones, or the
    rows' weights), so the normalizer is one more column of the same products, not a sum and a matrix-vector
    product of its own (MKL's are slow: a ``(rows, m) @ (m, 1)`` took as long as ``(rows, m) @ (m, 16)``).

    Summaries are built and kept as ``(Dh + 1, m)`` (what is returned is a transposed view): with 17 columns MKL
    took 1.6x as long for ``features^T values`` as for ``values^T features`` (performer's chunks, 72 x 32 x 256).
    """
    summary = values.transpose(-2, -1) @ features
    weights = _earlier_weights(scales)
    weights = weights.transpose(-2, -1) if reverse else weights
    seen = (weights @ summary.flatten(-2)).unflatten(-1, summary.shape[-2:])
    if carried is not None:
        state, scale = carried
        decay = torch.exp(-(scales - scale[..., None]).abs())  # carried towards each chunk's (larger) stabilizer
        seen.addcmul_(decay[..., None, None], state[:, :, None])
    edge = 0 if reverse else -1  # the chunk next to the following group
    return seen.transpose(-2, -1), (seen[:, :, edge] + summary[:, :, edge], scales[..., edge])


def one_backward_pass(length: int, dim: int, chunk: int, per_group: int, num_features: int) -> bool:
    """Whether the causal backward pass of an autograd feature map takes one loop over the groups, not two: the
    forward then keeps the key summary before each group, ``(Dh + 1, m)`` per group, while they take at most
    :data:`BOUNDARY_INPUTS` q-sized tensors (Performer's, the same at any batch now that groups are sized per batch
    and head: 2.1 at n = 1024, 1.06 at 2048, below 1 from 4096; 8.5 at n = 384, which takes two passes; the whole
    model's peak with them at n >= 1024: 1.10-1.13x full's)."""
    groups = len(_groups(length, chunk, per_group))
    return groups * num_features * (dim + 1) <= BOUNDARY_INPUTS * length * dim


class _Causal(torch.autograd.Function):
    """Chunks of ``chunk`` rows, in groups: inside a group every chunk at once (batched products, each chunk's view
    of the earlier ones as one ``(g, g)`` product), across groups a summary carried in a loop. Groups are bounded
    by :func:`chunks_per_group`, so memory stays O(n) at any length."""

    @staticmethod
    def forward(
        ctx, q, k, v, maps: _Maps, num_features: int, chunk: int, per_group: int, signed: bool, one_pass: bool, *params
    ):
        batch, heads, seq, _ = v.shape
        out = torch.empty_like(v)
        den = v.new_empty(v.shape[:3])
        stabilizers = v.new_empty(batch, heads, -(-seq // chunk))  # the key stabilizer each query chunk used
        groups = _groups(seq, chunk, per_group)
        # One backward pass: the key summary before each group (the first: none), in the stabilizer of the chunk
        # before it.
        boundaries = v.new_zeros(batch, heads, len(groups), v.shape[-1] + 1, num_features) if one_pass else None
        with torch.no_grad():
            carried = None
            for index, (start, end, chunks, size) in enumerate(groups):
                first = start // chunk
                if carried is not None and boundaries is not None:
                    boundaries[:, :, index] = carried[0]
                query_feat = _split(maps.queries(q[:, :, start:end], start, end), chunks, size)
                logits = _split(maps.keys(k[:, :, start:end], start, end), chunks, size)
                running = None if carried is None else carried[1]
                scales = stabilizers[..., first : first + chunks] = _chunk_scales(logits, running, signed)
                key_feat = _exp_(logits, scales[..., None, None], signed)
                values = _with_ones(_split(v[:, :, start:end], chunks, size))
                seen, carried = _scan_group(key_feat, values, scales, carried, reverse=False)
                if maps.pair_fn is None:  # (B, H, g, C, C): causal inside each chunk
                    within = (query_feat @ key_feat.transpose(-2, -1)).tril_()
                else:
                    q_rows, k_rows = (_split(t[:, :, start:end], chunks, size) for t in (q, k))
                    within = maps.pairs(q_rows, k_rows, start, end)
                # Numerators and normalizer, (Dh + 1, C) per chunk: the summaries' faster layout again.
                read = seen.transpose(-2, -1) @ query_feat.transpose(-2, -1)
                read = _add_product(read, values.transpose(-2, -1), within)
                den[:, :, start:end] = read[..., -1, :].flatten(2)
                out[:, :, start:end] = _normalized(read[..., :-1, :].transpose(-2, -1), read[..., -1, :]).flatten(2, 3)
        # Keeps out: rebuilding it costs the backward pass a (C, m) product per chunk (one pass, interleaved: causal
        # performer's whole model 0.98x full keeping it, 0.93x rebuilding), for one q-sized tensor per layer.
        ctx.save_for_backward(q, k, v, out, den, stabilizers, boundaries)
        ctx.maps = maps
        ctx.chunk, ctx.per_group, ctx.signed = chunk, per_group, signed
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, den, stabilizers, boundaries = ctx.saved_tensors
        maps = ctx.maps.for_backward()
        groups = _groups(v.shape[2], ctx.chunk, ctx.per_group)
        grad_q, grad_k, grad_v = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

        def group_rows(start: int, end: int, chunks: int, size: int):
            """The gradients of the rows' numerators and normalizers as one factor ``(B, H, g, C, Dh + 1)``, and
            the rows' values with a column of ones, its partner in every product."""
            d_num, d_den = _normalizer_grads(grad_out[:, :, start:end], out[:, :, start:end], den[:, :, start:end])
            values = _with_ones(v[:, :, start:end])
            return _split(_with_column(d_num, d_den), chunks, size), _split(values, chunks, size)

        if boundaries is not None:
            _one_pass(ctx, maps, groups, group_rows, q, k, stabilizers, boundaries, grad_q, grad_k, grad_v)
        else:
            _two_passes(ctx, maps, groups, group_rows, q, k, stabilizers, grad_q, grad_k, grad_v)
        return grad_q, grad_k, grad_v, None, None, None, None, None, None, *maps.grads


def _two_passes(ctx, maps: _Maps, groups, group_rows, q, k, stabilizers, grad_q, grad_k, grad_v) -> None:
    """The causal backward pass in two loops over the groups: forward order for the queries' gradients (the key
    summaries rebuilt on the way), reverse order for the keys' and values'. Closed-form gradients always take it:
    their key features are cheap to rebuild, and the summaries of :func:`_one_pass` took causal Based's whole-model
    peak from 1.10x full's to 1.15x for no speed."""
    # Closed forms (signed features with closed-form pairs): each feature gradient goes to them as two factors,
    # and the first loop needs no query features.
    analytic = maps.analytic is not None
    # Forward order: a chunk's queries need the summary of the keys before it (rebuilt, never stored).
    carried = None
    for start, end, chunks, size in groups:
        scales = stabilizers[..., start // ctx.chunk : start // ctx.chunk + chunks]
        with torch.no_grad():
            logits = _split(maps.keys(k[:, :, start:end], start, end), chunks, size)
            key_feat = _exp_(logits, scales[..., None, None], ctx.signed)
        d_rows, values = group_rows(start, end, chunks, size)
        seen, carried = _scan_group(key_feat, values, scales, carried, reverse=False)  # d_feat = d_rows seen^T
        if analytic:  # the chunks' own pairs: in the reverse loop
            del logits, key_feat
            q_rows = _split(q[:, :, start:end], chunks, size)
            grad_q[:, :, start:end] = maps.pull_back_factored(0, q_rows, start, end, d_rows, seen).flatten(2, 3)
        else:
            if maps.pair_fn is None:  # else the reverse loop pulls the chunks' own pairs back to q and k at once
                d_within = (d_rows @ values.transpose(-2, -1)).tril_()  # d(weight_ij), j <= i
                d_feat = _add_product(d_within @ key_feat, d_rows, seen)
            else:
                d_feat = d_rows @ seen.transpose(-2, -1)
            del logits, key_feat
            leaf, query_feat = maps.with_grad(maps.query_fn, q[:, :, start:end], start, end)
            grad_q[:, :, start:end] = maps.pull_back(leaf, query_feat, d_feat.flatten(2, 3))
    # Reverse order: a chunk's keys need what the queries of this and later chunks pulled from them. Ordered
    # so that few (rows, m) tensors are alive at once: a group's are the kernel's largest.
    carried = None
    for start, end, chunks, size in reversed(groups):
        scales = stabilizers[..., start // ctx.chunk : start // ctx.chunk + chunks]
        d_rows, values = group_rows(start, end, chunks, size)
        d_num = d_rows[..., :-1]
        q_rows, k_rows = (_split(t[:, :, start:end], chunks, size) for t in (q, k))
        with torch.no_grad():
            query_feat = _split(maps.queries(q[:, :, start:end], start, end), chunks, size)
        # What the queries of the later chunks pulled from these keys, each relative to its chunk's stabilizer:
        # d_feat of the keys = values pulled^T.
        pulled, carried = _scan_group(query_feat, d_rows, scales, carried, reverse=True)
        d_within = (d_rows @ values.transpose(-2, -1)).tril_()
        if analytic:  # signed: the key features are the logits
            del query_feat
            with torch.no_grad():
                rows_grad_v = _split(maps.keys(k[:, :, start:end], start, end), chunks, size) @ pulled[..., :-1]
                rows_grad_v += maps.pairs(q_rows, k_rows, start, end).transpose(-2, -1) @ d_num
            grad_v[:, :, start:end] = rows_grad_v.flatten(2, 3)
            dq, dk = maps.pull_back_pairs(q_rows, k_rows, start, end, d_within)
            dk = dk + maps.pull_back_factored(1, k_rows, start, end, values, pulled)
            grad_k[:, :, start:end] = dk.flatten(2, 3)
            grad_q[:, :, start:end] += dq.flatten(2, 3)
            continue
        leaf, logits = maps.with_grad(maps.key_fn, k[:, :, start:end], start, end)
        key_feat = _exp_(_split(logits.detach().clone(), chunks, size), scales[..., None, None], ctx.signed)
        if maps.pair_fn is None:
            within = (query_feat @ key_feat.transpose(-2, -1)).tril_()
        else:  # the chunks' own pairs from q and k rows, q as a leaf too
            query_leaf = q_rows.detach().requires_grad_()
            with torch.enable_grad():
                pairs = maps.pair_fn(query_leaf, _split(leaf, chunks, size), start, end, *maps.leaves)
            # In place: the output itself is not saved for the backward (a pair function whose last op
            # saves it, like exp, would make autograd.grad raise, not err silently); the upper half gets
            # no gradient.
            within = pairs.detach().tril_()
        rows_grad_v = _add_product(key_feat @ pulled[..., :-1], within.transpose(-2, -1), d_num.transpose(-2, -1))
        grad_v[:, :, start:end] = rows_grad_v.flatten(2, 3)
        del within
        if maps.pair_fn is None:
            d_feat = _add_product(d_within.transpose(-2, -1) @ query_feat, values, pulled)
            del query_feat
            d_logits = d_feat if ctx.signed else d_feat.mul_(key_feat)
            grad_k[:, :, start:end] = maps.pull_back(leaf, logits, d_logits.flatten(2, 3))
        else:
            d_feat = values @ pulled.transpose(-2, -1)
            dk, dq = maps.pull_back_all([leaf, query_leaf], [logits, pairs], [d_feat.flatten(2, 3), d_within])
            grad_k[:, :, start:end] = dk
            grad_q[:, :, start:end] += dq.flatten(2, 3)


def _one_pass(ctx, maps: _Maps, groups, group_rows, q, k, stabilizers, boundaries, grad_q, grad_k, grad_v) -> None:
    """The causal backward pass (autograd feature maps) in one loop, reverse order, each group's key summary rebuilt
    from the one the forward kept before it: every group's query and key features are built once, not twice
    (interleaved, whole model n = 2048: causal performer 0.85x full -> 0.98x, hedgehog 1.92x -> 2.13x)."""
    carried = None
    for index, (start, end, chunks, size) in reversed(list(enumerate(groups))):
        first = start // ctx.chunk
        scales = stabilizers[..., first : first + chunks]
        before = None if index == 0 else (boundaries[:, :, index], stabilizers[..., first - 1])
        d_rows, values = group_rows(start, end, chunks, size)
        d_num = d_rows[..., :-1]
        key_leaf, logits = maps.with_grad(maps.key_fn, k[:, :, start:end], start, end)
        key_feat = _exp_(_split(logits.detach().clone(), chunks, size), scales[..., None, None], ctx.signed)
        seen, _ = _scan_group(
            key_feat, values, scales, before, reverse=False
        )  # queries' feature gradient: d_rows seen^T
        query_leaf, query_graph = maps.with_grad(maps.query_fn, q[:, :, start:end], start, end)
        query_feat = _split(query_graph.detach(), chunks, size)
        # What the queries of this and later chunks pulled from these keys: keys' feature gradient values pulled^T.
        pulled, carried = _scan_group(query_feat, d_rows, scales, carried, reverse=True)
        if maps.pair_fn is None:  # (B, H, g, C, C): causal inside each chunk
            within = (query_feat @ key_feat.transpose(-2, -1)).tril_()
        else:  # the chunks' own pairs from q and k rows, q as a leaf of its own
            pair_leaf = _split(q[:, :, start:end], chunks, size).detach().requires_grad_()
            with torch.enable_grad():
                pairs = maps.pair_fn(pair_leaf, _split(key_leaf, chunks, size), start, end, *maps.leaves)
            within = pairs.detach().tril_()  # in place, as in _two_passes
        rows_grad_v = _add_product(key_feat @ pulled[..., :-1], within.transpose(-2, -1), d_num.transpose(-2, -1))
        grad_v[:, :, start:end] = rows_grad_v.flatten(2, 3)
        del within
        d_within = (d_rows @ values.transpose(-2, -1)).tril_()  # d(weight_ij), j <= i
        # Keys, then queries: the key features are the last (rows, m) tensor both need.
        d_feat = values @ pulled.transpose(-2, -1)
        if maps.pair_fn is None:
            _add_product(d_feat, d_within.transpose(-2, -1), query_feat.transpose(-2, -1))
            d_feat = d_feat if ctx.signed else d_feat.mul_(key_feat)
            grad_k[:, :, start:end] = maps.pull_back(key_leaf, logits, d_feat.flatten(2, 3))
            d_feat = _add_product(d_within @ key_feat, d_rows, seen)
            del key_feat, logits
            grad_q[:, :, start:end] = maps.pull_back(query_leaf, query_graph, d_feat.flatten(2, 3))
        else:
            dk, dq = maps.pull_back_all([key_leaf, pair_leaf], [logits, pairs], [d_feat.flatten(2, 3), d_within])
            del key_feat, logits
            grad_k[:, :, start:end] = dk
            d_feat = d_rows @ seen.transpose(-2, -1)
            grad_q[:, :, start:end] = dq.flatten(2, 3) + maps.pull_back(query_leaf, query_graph, d_feat.flatten(2, 3))


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    query_features: FeatureFn,
    key_logits: FeatureFn,
    num_features: int,
    causal: bool = False,
    chunk: int = 128,
    signed: bool = False,
    parameters: tuple[torch.Tensor, ...] = (),
    pair_scores: PairFn | None = None,
    analytic: AnalyticGradients | None = None,
) -> torch.Tensor:
    """Normalized feature-map attention ``(B, H, N, Dh)`` in and out, with O(n) memory in training.

    ``chunk``: rows per step of the causal scan (the within-chunk part is a
    ``(chunk, chunk)`` product). See the module docstring for the feature functions.
    ``signed=True``: ``key_logits`` returns the key features themselves, which
    may be negative (a Taylor feature map), with no stabilizer; the caller
    makes sure every ``phi(q) . phi(k)`` is positive. ``parameters``: learned
    tensors both functions take after ``end``; their gradients flow as q's do.
    ``pair_scores``: the causal chunk's ``phi(q) . phi(k)`` in closed form (signed
    features only: the others' key features carry a running stabilizer).
    ``analytic``: closed-form gradients of the feature (and pair) functions, for
    the backward pass instead of autograd on every chunk (:class:`AnalyticGradients`).
    """
    if pair_scores is not None and not signed:
        raise ValueError("pair_scores needs signed=True: unsigned key features are stabilized chunk by chunk")
    if analytic is not None and not (signed and (pair_scores is not None or not causal)):
        raise ValueError("analytic gradients need signed=True, and causally a pair_scores too")
    maps = _Maps(query_features, key_logits, parameters, pair_scores if causal else None, analytic)
    if causal:
        length, dim = v.shape[-2:]  # budgets are per (batch, head): a larger batch keeps groups of as many rows
        per_group = chunks_per_group(length, dim, chunk, num_features, analytic is not None)
        one_pass = analytic is None and one_backward_pass(length, dim, chunk, per_group, num_features)
        return _Causal.apply(q, k, v, maps, num_features, chunk, per_group, signed, one_pass, *parameters)
    return _Bidirectional.apply(q, k, v, maps, num_features, signed, *parameters)
