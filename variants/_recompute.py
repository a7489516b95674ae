"""Recompute a core's intermediates in the backward pass instead of keeping them.

Autograd keeps every intermediate a backward pass needs: score blocks, feature
maps, decay matrices, sorting activations. For a core whose intermediates are
several times the size of q, k and v, that makes its training step need more
memory than exact attention's fused kernel, which keeps only q, k, v, the output
and one number per row. :func:`recomputed` runs the core under
``torch.utils.checkpoint`` (non-reentrant): the forward pass keeps only the
core's inputs, and the backward pass runs the core again to rebuild what it needs,
one layer at a time. It costs one more forward pass of the core, which is the
trade the lean kernels (``_blocks``, ``_linear``, ``_lsh``) make by hand.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint


def recomputed(fn: Callable[..., torch.Tensor], *tensors: torch.Tensor, random: bool = False, **kwargs) -> torch.Tensor:
    """``fn(*tensors, **kwargs)``, keeping only ``tensors`` for the backward pass when a gradient is needed.

    ``random=True``: ``fn`` draws random numbers (dropout), and the recomputation replays the same draws.
    """
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors if isinstance(t, torch.Tensor))
    if not needs_grad:
        return fn(*tensors, **kwargs)
    return checkpoint(fn, *tensors, use_reentrant=False, preserve_rng_state=random, **kwargs)
