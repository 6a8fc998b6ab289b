"""Adaptive de-mask module (paper §3.2, Eq. 5-8; Table 7 variants).

H sub-modules, each a ResNet block followed by direction-constrained self-attention (DC-SA),
then one final ResNet block, as in the released code. DC-SA weights every query's attention
on key j by B_h[j] after the softmax, without renormalisation (Eq. 6):

    B_1 = 1 on kept positions, `mask_init` (0.02) on masked ones;  B_{h+1} = sqrt(B_h)  (Eq. 8)

so the mask codes, which carry little information at first, can barely influence the kept
ones, while the masked positions read freely from the kept positions; their influence grows
layer by layer (0.02, 0.141, 0.376, 0.613, 0.783, 0.885, 0.941, 0.970 for H = 8).

Variants: `dcsa-update` (the paper), `dcsa` (B_h = B_1 for every layer), `sa` (B = 1: plain
self-attention; with no mask this is VQGAN*'s extra blocks).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from mqvq.models.layers import AttnBlock, ResnetBlock


def key_weight_schedule(keep: torch.Tensor, layers: int, mask_init: float, update: bool) -> list[torch.Tensor]:
    """B_h for h = 1..layers, each (B, L) float: 1 on kept positions, mask_init**(1/2^(h-1)) on masked ones."""
    b = torch.where(keep, torch.ones((), device=keep.device), torch.full((), float(mask_init), device=keep.device))
    out = []
    for _ in range(layers):
        out.append(b)
        if update:
            b = b.sqrt()
    return out


class DeMask(nn.Module):
    def __init__(
        self,
        channels: int,
        layers: int,
        variant: str = "dcsa-update",
        mask_init: float = 0.02,
        renormalize: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        if variant not in ("dcsa-update", "dcsa", "sa"):
            raise ValueError(variant)
        self.variant, self.mask_init, self.renormalize = variant, mask_init, renormalize
        self.res = nn.ModuleList(ResnetBlock(channels, channels, dropout) for _ in range(layers))
        self.attn = nn.ModuleList(AttnBlock(channels) for _ in range(layers))
        self.final = ResnetBlock(channels, channels, dropout)

    def forward(self, h: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """h: (B, C, H, W) filled grid features; keep: (B, H*W) bool, True where a code was kept."""
        if self.variant == "sa" or keep is None:
            weights = [None] * len(self.attn)
        else:
            weights = key_weight_schedule(keep, len(self.attn), self.mask_init, self.variant == "dcsa-update")
        for res, attn, w in zip(self.res, self.attn, weights):
            h = attn(res(h), w, self.renormalize)
        return self.final(h)
