"""Adapters that run the public reference packages on the same inputs as our variants.

Installed with ``pip install -e ".[peers]"``. Each adapter takes our
``(B, H, N, Dh)`` q, k, v and our variant's hyperparameters, and returns the
peer's output, so that the benchmark times both the same way. Only the
attention core is timed: the Linformer peer's Q/K/V/output projections are
replaced by identities (Nyström's too, its q, k, v passed in as the chunks of one tensor).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

PeerFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Peer:
    """A reference package and how to build its core for one of our variants."""

    variant: str
    package: str  # the PyPI name
    module: str  # the import name
    build: Callable[..., tuple[nn.Module, PeerFn]]

    def available(self) -> bool:
        return importlib.util.find_spec(self.module) is not None


def _local_attention(*, heads: int, dim_head: int, seq_len: int, causal: bool, hparams: dict[str, Any]):
    from local_attention import LocalAttention

    module = LocalAttention(
        window_size=hparams["window"],
        causal=causal,
        look_backward=1,
        look_forward=0 if causal else 1,
        autopad=True,
        use_rotary_pos_emb=False,
    )
    return module, lambda q, k, v: module(q, k, v)


def _linformer(*, heads: int, dim_head: int, seq_len: int, causal: bool, hparams: dict[str, Any]):
    from linformer import LinformerSelfAttention

    dim = heads * dim_head
    module = LinformerSelfAttention(
        dim=dim, seq_len=seq_len, k=hparams["k"], heads=heads, dim_head=dim_head, share_kv=hparams["share_kv"]
    )
    # Time the core only, as for ours: the skeleton owns the projections.
    module.to_q = module.to_k = module.to_out = nn.Identity()
    if not hparams["share_kv"]:
        module.to_v = nn.Identity()

    def call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        batch, _, n, _ = q.shape
        out = module(q.transpose(1, 2).reshape(batch, n, dim))  # peer reads q = k = v from x
        return out.view(batch, n, heads, dim_head).transpose(1, 2)

    return module, call


def _performer(*, heads: int, dim_head: int, seq_len: int, causal: bool, hparams: dict[str, Any]):
    import contextlib
    import io
    import warnings

    with warnings.catch_warnings():  # it compares torch versions with distutils' deprecated LooseVersion
        warnings.simplefilter("ignore", DeprecationWarning)
        from performer_pytorch import FastAttention

    with contextlib.redirect_stdout(io.StringIO()):  # it prints a note about its CUDA kernel
        module = FastAttention(dim_heads=dim_head, nb_features=hparams["nb_features"], causal=causal)
    return module, lambda q, k, v: module(q, k, v)


def _nystrom(*, heads: int, dim_head: int, seq_len: int, causal: bool, hparams: dict[str, Any]):
    from nystrom_attention import NystromAttention

    module = NystromAttention(
        dim=heads * dim_head,
        dim_head=dim_head,
        heads=heads,
        num_landmarks=hparams["num_landmarks"],
        pinv_iterations=hparams["pinv_iterations"],
        residual=hparams["residual"],
        residual_conv_kernel=hparams["residual_kernel"],
    )
    # Time the core only: q, k, v go in as the chunks its to_qkv would produce; no output projection.
    module.to_qkv = module.to_out = nn.Identity()

    def call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        batch, _, n, _ = q.shape
        x = torch.cat([t.transpose(1, 2).reshape(batch, n, heads * dim_head) for t in (q, k, v)], dim=-1)
        return module(x).view(batch, n, heads, dim_head).transpose(1, 2)

    return module, call


def _reformer(*, heads: int, dim_head: int, seq_len: int, causal: bool, hparams: dict[str, Any]):
    from reformer_pytorch import LSHAttention

    module = LSHAttention(bucket_size=hparams["bucket_size"], n_hashes=hparams["n_hashes"], causal=causal)

    def call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # shared QK: the peer reads q
        return module(q.flatten(0, 1), v.flatten(0, 1))[0].view_as(q)

    return module, call


PEERS: dict[str, Peer] = {
    p.variant: p
    for p in (
        Peer("local", "local-attention", "local_attention", _local_attention),
        Peer("linformer", "linformer", "linformer", _linformer),
        Peer("performer", "performer-pytorch", "performer_pytorch", _performer),
        Peer("nystrom", "nystrom-attention", "nystrom_attention", _nystrom),
        Peer("reformer", "reformer-pytorch", "reformer_pytorch", _reformer),
    )
}
