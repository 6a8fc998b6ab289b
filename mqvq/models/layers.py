"""Building blocks shared by encoder, decoder and de-mask module (VQGAN / taming layout).

Attention uses `scaled_dot_product_attention`; the de-mask module's per-key weights are
folded into the values (see `dc_attention`), so masked and plain attention share one kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def Normalize(channels: int) -> nn.GroupNorm:
    # taming uses 32 groups; tiny test models have fewer channels than that
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GN -> swish -> conv3 -> GN -> swish -> dropout -> conv3, plus a (1x1) shortcut."""

    def __init__(self, cin: int, cout: int | None = None, dropout: float = 0.0):
        super().__init__()
        cout = cout or cin
        self.norm1, self.conv1 = Normalize(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = Normalize(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class Downsample(nn.Module):
    """Stride-2 conv with taming's asymmetric (0, 1, 0, 1) padding."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def dc_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_weight: torch.Tensor | None = None, renormalize: bool = False
) -> torch.Tensor:
    """Single-head attention over (B, L, C) with an optional per-key weight b (B, L).

    Without renormalisation (paper Eq. 6, as released): A = softmax(q k^T / sqrt(C)) * b, i.e.
    every query's weight on key j is b_j times its softmax weight. Since A v = softmax(.) (b * v),
    the weight folds exactly into the values and one fused SDPA call computes it.
    With renormalisation the weights are softmax(q k^T / sqrt(C) + log b), which sums to 1
    and removes keys with b = 0 entirely.
    """
    if key_weight is None:
        return F.scaled_dot_product_attention(q, k, v)
    if renormalize:
        bias = torch.log(key_weight.to(q.dtype))[:, None, :]  # (B, 1, L): broadcast over queries
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return F.scaled_dot_product_attention(q, k, v * key_weight[..., None].to(v.dtype))


def dc_attention_reference(q, k, v, key_weight=None, renormalize=False):
    """Literal softmax-then-multiply version of `dc_attention`, for tests."""
    a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)
    if key_weight is not None:
        a = a * key_weight[:, None, :]
        if renormalize:
            a = a / a.sum(-1, keepdim=True)
    return a @ v


class AttnBlock(nn.Module):
    """GN -> 1x1 q, k, v -> single-head attention over all H*W positions -> 1x1 proj, residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = Normalize(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(
        self, x: torch.Tensor, key_weight: torch.Tensor | None = None, renormalize: bool = False
    ) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)  # 3 x (B, L, C)
        out = dc_attention(q, k, v, key_weight, renormalize)  # (B, L, C)
        return x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))
