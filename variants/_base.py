"""The one contract every attention variant meets, and the errors it raises.

A variant owns only the mixing step ``(B, H, N, Dh) -> (B, H, N, Dh)``; the
skeleton owns embeddings and projections. The base class validates inputs once,
so each variant's ``attend`` can assume well-formed tensors.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

State = dict[str, torch.Tensor]  # what a decoding variant carries from one token to the next


class AttentionError(ValueError):
    """Base class for every error the registry raises on bad requests."""


class UnknownVariantError(AttentionError):
    """A name that is not in the registry."""


class UnsupportedError(AttentionError):
    """A capability (causal, padding mask, length) the variant does not have."""


class HyperparameterError(AttentionError):
    """A hyperparameter that is unknown or out of its allowed range."""


def check_range(
    name: str,
    value: float,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
    """Raise a HyperparameterError naming ``name`` and its allowed range."""
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    too_high = high is not None and (value > high if high_inclusive else value >= high)
    if too_low or too_high:
        left = "[" if low_inclusive else "("
        right = "]" if high_inclusive else ")"
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise HyperparameterError(f"{name}={value!r} is out of range; allowed: {left}{lo}, {hi}{right}")


FAMILIES = {  # family -> what it means; the order reports list them in
    "exact": "exact softmax attention",
    "sparse": "sliding window and sparse patterns",
    "low-rank": "low-rank projections of the keys and values",
    "kernel": "kernel feature maps and linear attention",
    "recurrent": "recurrent (decayed) state",
    "learned": "learned attention patterns",
    "other": "not declared",
}


class Attention(nn.Module):
    """Base class of a registered attention core.

    Subclasses set the capability flags, take their hyperparameters as explicit
    keyword arguments (so a typo in YAML fails at build time) and implement
    :meth:`attend`. ``forward`` validates shapes and capabilities first.
    """

    name: ClassVar[str] = ""
    supports_causal: ClassVar[bool] = False
    supports_mask: ClassVar[bool] = True
    supports_dropout: ClassVar[bool] = True  # applies ``dropout`` to its attention weights in training mode
    needs_max_seq_len: ClassVar[bool] = False
    normalized_rows: ClassVar[bool] = True  # each query's weights are a distribution (>= 0, sum 1); Linformer's not
    # The hyperparameter that buys accuracy with compute, and values to try: the approximation probe
    # (runners.maps) plots error against it. None: the variant has no such knob (exact attention).
    budget: ClassVar[tuple[str, tuple[int, ...]] | None] = None
    # Token-by-token causal decoding: the variant implements ``init_state`` and ``decode_step`` (and may
    # override ``prefill`` with a parallel form). The contract checks stepwise == causal parallel output.
    supports_decoding: ClassVar[bool] = False
    # Cross-attention: queries of length N over keys and values of length M (an encoder's output), with
    # the mask over the keys, (B, M). Only for variants whose mixing does not tie a query to a key position
    # (a window, a block pattern, a decay by distance, positional reweighting all need the two aligned).
    supports_cross: ClassVar[bool] = False
    # How reports group and colour it: one of FAMILIES (plots give a family one hue, tables sort by it).
    family: ClassVar[str] = "other"

    def __init__(
        self,
        *,
        heads: int,
        dim_head: int,
        max_seq_len: int | None = None,
        causal: bool = False,
        dropout: float = 0.0,
        cross: bool = False,
    ) -> None:
        super().__init__()
        check_range("heads", heads, low=1)
        check_range("dim_head", dim_head, low=1)
        check_range("dropout", dropout, low=0.0, high=1.0, high_inclusive=False)
        if max_seq_len is not None:
            check_range("max_seq_len", max_seq_len, low=1)
        self.heads = heads
        self.dim_head = dim_head
        self.max_seq_len = max_seq_len
        self.causal = causal
        self.dropout = dropout
        self.cross = cross  # built for cross-attention (variants.build checks supports_cross)

    @property
    def dropout_p(self) -> float:
        """Dropout on attention weights, active only in training mode."""
        return self.dropout if self.training else 0.0

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mix ``v`` by attention of ``q`` over ``k``; all ``(B, H, N, Dh)``.

        ``mask`` is a bool ``(B, N)`` tensor, True for real tokens; padded keys
        get no weight. Outputs at padded query positions are finite but
        otherwise unspecified.
        """
        self._check_inputs(q, k, v, mask)
        return self.attend(q, k, v, mask)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """The variant's mixing step, called with validated inputs."""
        raise NotImplementedError

    def init_state(
        self, batch: int, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> State:
        """The state before the first token: an empty KV cache, a zero summary. Decoding variants override it."""
        self._check_decoding()
        raise NotImplementedError

    def step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Attend one new token ``(B, H, 1, Dh)`` over every token so far; returns its output and the new state.

        Equals the causal parallel output at that position. The state passed in
        may be reused (updated in place or replaced); use the one returned.
        """
        self._check_decoding()
        if q.dim() != 4 or q.shape[2] != 1 or q.shape != k.shape or q.shape != v.shape:
            raise ValueError(
                f"{self.name}: step takes one token, q, k, v of shape (batch, heads, 1, dim_head); "
                f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
            )
        return self.decode_step(q, k, v, state)

    def prefill(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, State]:
        """Causal outputs of a whole prompt ``(B, H, N, Dh)`` and the state after its last token.

        The default steps through the prompt; variants override it with their parallel form.
        """
        self._check_decoding()
        self._check_inputs(q, k, v, None)
        state = self.init_state(q.shape[0], device=q.device, dtype=q.dtype)
        outs = []
        for t in range(q.shape[2]):
            out, state = self.decode_step(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1], state)
            outs.append(out)
        return torch.cat(outs, dim=2), state

    def decode_step(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State]:
        """The variant's one-token step, called with validated inputs."""
        raise NotImplementedError

    def _check_decoding(self) -> None:
        if not self.supports_decoding:
            from variants._registry import cannot_decode  # the registry imports this module

            raise cannot_decode(self.name)
        if not self.causal:
            raise UnsupportedError(f"{self.name}: decoding is causal; build it with causal=True")

    def cross_state(self, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> State:
        """What generation keeps of the source for this cross-attention core, built once per source.

        The default keeps the source's keys and values (and mask): a cache of ``2 x M x dim_head`` per head.
        Variants with a constant summary of the keys and values override it (and :meth:`cross_step`).
        """
        self._check_cross()
        state = {"k": k, "v": v}
        return state | ({"mask": mask} if mask is not None else {})

    def cross_step(self, q: torch.Tensor, state: State) -> torch.Tensor:
        """Queries ``(B, H, T, Dh)`` (during generation, the new token's) over the source kept in ``state``."""
        self._check_cross()
        return self(q, state["k"], state["v"], state.get("mask"))

    def _check_cross(self) -> None:
        if not self.cross:
            raise UnsupportedError(f"{self.name}: build it with cross=True to attend over another sequence")

    def on_train_step(self, step: int) -> None:
        """Called by the training loop once per optimizer step, never inside ``forward``.

        Variants with state to refresh (Performer's random features) override it,
        so timed forward passes never change the module.
        """

    def extra_repr(self) -> str:
        cross = ", cross=True" if self.cross else ""
        return f"heads={self.heads}, dim_head={self.dim_head}, causal={self.causal}{cross}"

    def _check_inputs(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> None:
        if self.cross:
            aligned = q.dim() == 4 and k.shape == v.shape and q.shape[:2] + q.shape[3:] == k.shape[:2] + k.shape[3:]
            if not aligned:
                raise ValueError(
                    f"{self.name}: cross-attention takes q (batch, heads, N, dim_head) and k, v of one shape "
                    f"(batch, heads, M, dim_head); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
                )
        elif q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
            hint = "; for queries over another sequence build it with cross=True" if q.shape[2:] != k.shape[2:] else ""
            raise ValueError(
                f"{self.name}: q, k, v must share one shape (batch, heads, seq, dim_head); "
                f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}{hint}"
            )
        batch, heads, _, dim_head = q.shape
        keys = k.shape[2]
        seq = keys if self.cross else q.shape[2]  # what a fixed-length variant must hold: the source, crossing
        if heads != self.heads or dim_head != self.dim_head:
            raise ValueError(
                f"{self.name}: built for heads={self.heads}, dim_head={self.dim_head}; "
                f"got heads={heads}, dim_head={dim_head}"
            )
        if self.needs_max_seq_len and self.max_seq_len is not None and seq > self.max_seq_len:
            from variants._registry import get, names  # the registry imports this module

            free = ", ".join(n for n in names() if not get(n).needs_max_seq_len)
            raise UnsupportedError(
                f"{self.name}: sequence length {seq} exceeds max_seq_len={self.max_seq_len}; "
                f"build it with a larger max_seq_len, or use a variant without a fixed length: {free}"
            )
        if mask is None:
            return
        if not self.supports_mask:
            raise UnsupportedError(f"{self.name} does not support a padding mask; pass mask=None")
        if mask.dtype != torch.bool or mask.shape != (batch, keys):
            raise ValueError(
                f"{self.name}: mask must be a bool tensor over the keys of shape (batch, seq)=({batch}, {keys}), "
                f"True for real tokens; got dtype={mask.dtype}, shape={tuple(mask.shape)}"
            )
