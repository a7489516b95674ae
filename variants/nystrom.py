"""Nyströmformer (Xiong et al. 2021, "Nyströmformer: A Nyström-Based Algorithm for Approximating Self-Attention").

Softmax attention is approximated through ``m`` landmarks, the means of ``m``
equal segments of the queries and of the keys: ``softmax(Q K~^T)
pinv(softmax(Q~ K~^T)) softmax(Q~ K^T) V``, with the pseudo-inverse computed by
``pinv_iterations`` Newton-Schulz-style iterations (the paper's eq. 16). O(n m)
time and memory. The sequence is padded at the front to a multiple of ``m``
and the padding is masked, as in the ``nystrom-attention`` package, whose
landmarks, iterations and depthwise-convolution residual over the values
(``residual=True``, kernel ``residual_kernel``) this variant follows.

Not causal: a landmark is the mean of a segment, so every query would see the
future through it (a known bug of causal Nyström ports); ``build`` refuses
``causal=True``. The pseudo-inverse is initialised per sequence and head, not
from the maximum over the whole batch as the package does, so batch items stay
independent.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import variants
from variants._recompute import recomputed


def iterative_pinv(x: torch.Tensor, iterations: int) -> torch.Tensor:
    """Approximate Moore-Penrose pseudo-inverse of each ``(m, m)`` matrix in ``x`` (eq. 16 of the paper)."""
    abs_x = x.abs()
    scale = abs_x.sum(dim=-1).amax(dim=-1) * abs_x.sum(dim=-2).amax(dim=-1)  # (B, H): per matrix
    z = x.transpose(-1, -2) / scale[..., None, None]
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    for _ in range(iterations):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - xz @ (15 * eye - xz @ (7 * eye - xz)))
    return z


@variants.register("nystrom")
class NystromAttention(variants.Attention):
    """Nyström approximation of softmax attention with ``num_landmarks`` segment-mean landmarks: O(n m)."""

    family = "low-rank"
    supports_causal = False
    supports_dropout = False  # the package has none inside attention either; build refuses dropout > 0
    normalized_rows = False  # the pseudo-inverse mixes landmarks with signed weights
    budget = ("num_landmarks", (4, 8, 16, 32, 64, 128))

    def __init__(
        self,
        *,
        num_landmarks: int = 64,
        pinv_iterations: int = 6,
        residual: bool = True,
        residual_kernel: int = 33,
        eps: float = 1e-8,
        **common,
    ) -> None:
        super().__init__(**common)
        variants.check_range("num_landmarks", num_landmarks, low=1)
        variants.check_range("pinv_iterations", pinv_iterations, low=1)
        variants.check_range("residual_kernel", residual_kernel, low=1)
        if residual_kernel % 2 == 0:
            raise variants.HyperparameterError(f"residual_kernel={residual_kernel} must be odd (centred convolution)")
        self.num_landmarks = num_landmarks
        self.pinv_iterations = pinv_iterations
        self.eps = eps
        self.residual_kernel = residual_kernel
        self.residual = None
        if residual:  # depthwise over the sequence, one filter per head, as the package's Conv2d(h, h, (k, 1))
            self.residual = nn.Parameter(torch.empty(self.heads, 1, residual_kernel, 1))
            nn.init.kaiming_uniform_(self.residual, a=math.sqrt(5))  # Conv2d's default initialisation

    def attend(self, q, k, v, mask):
        with torch.autocast(device_type=q.device.type, enabled=False):
            out_dtype = q.dtype
            dtype = torch.promote_types(q.dtype, torch.float32)  # the iterative inverse needs fp32 at least
            # Recomputed in the backward pass: training keeps q, k, v, not the landmarks' intermediates.
            out = recomputed(self._nystrom, *(t.to(dtype) for t in (q, k, v)), mask)
        return out.to(out_dtype)

    def _nystrom(self, q, k, v, mask):
        batch, heads, seq, dim = q.shape
        m = self.num_landmarks
        pad = -seq % m
        segment = math.ceil(seq / m)  # tokens per landmark
        valid = None
        if mask is not None or pad:  # padding at the front is masked, like the user's padding
            valid = torch.ones(batch, seq, dtype=torch.bool, device=q.device) if mask is None else mask
            valid = F.pad(valid, (pad, 0), value=False)
            q, k, v = (F.pad(t, (0, 0, pad, 0)) * valid[:, None, :, None] for t in (q, k, v))
        scale = dim**-0.5
        q_marks = q.view(batch, heads, m, segment, dim).sum(dim=3)  # (B, H, m, Dh)
        k_marks = k.view(batch, heads, m, segment, dim).sum(dim=3)
        if valid is None:
            q_marks, k_marks = q_marks * (scale / segment), k_marks / segment
            near = far = None
        else:
            counts = valid.view(batch, 1, m, segment).sum(dim=-1)  # (B, 1, m) real tokens per landmark
            q_marks, k_marks = (
                q_marks * scale / (counts[..., None] + self.eps),
                k_marks / (counts[..., None] + self.eps),
            )
            marks_ok = counts > 0  # (B, 1, m)
            tokens_ok = valid[:, None, :]  # (B, 1, n)
            # A row with nothing allowed is uniform over every column, as a softmax of all-equal scores is.
            near = (tokens_ok[..., :, None] & marks_ok[..., None, :]) | ~tokens_ok[..., :, None]  # (B, 1, n, m)
            far = (marks_ok[..., :, None] & tokens_ok[..., None, :]) | ~marks_ok[..., :, None]  # (B, 1, m, n)
        kernel_2 = q_marks @ k_marks.transpose(-1, -2)  # (B, H, m, m)
        if valid is not None:
            kernel_2 = kernel_2.masked_fill(
                ~(marks_ok[..., :, None] & marks_ok[..., None, :]), torch.finfo(q.dtype).min
            )
        inverse = iterative_pinv(kernel_2.softmax(dim=-1), self.pinv_iterations)
        # softmax(q k_marks^T) @ (inverse @ (softmax(q_marks k^T) @ v)): the two (n, m) softmaxes as fused
        # attention calls, which keep no (n, m) matrix (and never an (n, m) @ (m, m) product).
        summary = F.scaled_dot_product_attention(q_marks, k, v, attn_mask=far, scale=1.0)  # (B, H, m, Dh)
        out = F.scaled_dot_product_attention(q, k_marks, inverse @ summary, attn_mask=near, scale=scale)
        if self.residual is not None:
            out = out + self._residual_conv(v)
        return out[:, :, pad:]

    def _residual_conv(self, v: torch.Tensor) -> torch.Tensor:
        """The package's ``Conv2d(h, h, (k, 1), groups=h)`` over ``v``, as a depthwise conv1d over heads x width.

        Same values. With ``heads`` channels, oneDNN pads them to its block of 8 or 16: the convolution's
        forward and backward held 21 q-sized tensors against 8 this way (n = 2048); one channel per
        (head, column), each with its head's filter, is a multiple of the block.
        """
        batch, heads, seq, dim = v.shape
        columns = v.transpose(2, 3).reshape(batch, heads * dim, seq)
        weight = self.residual.to(v.dtype).view(heads, 1, self.residual_kernel).repeat_interleave(dim, dim=0)
        out = F.conv1d(columns, weight, padding=self.residual_kernel // 2, groups=heads * dim)
        return out.view(batch, heads, dim, seq).transpose(2, 3)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_landmarks={self.num_landmarks}, pinv_iterations={self.pinv_iterations}, "
            f"residual={self.residual is not None}, residual_kernel={self.residual_kernel}"
        )
