"""Adaptive mask module (paper §3.2, Eq. 2-4), the random-mask ablation, and the batched
scatter of kept codes back into the 2-D grid.

Adaptive: a scoring network gives s_l in (0, 1) for every region feature z_l; the N = (1 - ratio) L
highest-scoring positions are kept (selection on detached scores, as released) and their
features become LayerNorm(z_l) * s_l, so the scorer receives gradient through the kept
features. Kept positions are returned in raster order (the order Stackformer models; the
set is what matters to the quantizer). Random: the same with uniform random scores and
unit modulation, so the two differ only in which positions are kept. All batched: topk,
gather and scatter on the device, no Python loop over the batch, no host sync. Selectors that
give the choice itself a learning signal, and the rule-based bounds, are in `selectors.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from mqvq.config import num_kept


@dataclass
class MaskOutput:
    features: torch.Tensor  # (B, N, C) kept region features (modulated for adaptive)
    positions: torch.Tensor  # (B, N) int64 kept positions in [0, L), increasing (raster order)
    keep: torch.Tensor  # (B, L) bool, True at kept positions
    scores: torch.Tensor | None  # (B, L) importance scores (adaptive only)
    relaxed: torch.Tensor | None = None  # (B, L) differentiable keep surrogate (straight-through selector, training)


SCORERS = ("mlp", "mlp-bn", "conv", "conv-nobn")


class MLPScorer(nn.Module):
    """The paper's two-layer MLP applied to every region feature; `batchnorm` adds the released
    scorer's BatchNorm over the batch's score logits (the `mlp-bn` variant)."""

    def __init__(self, channels: int, hidden: int, batchnorm: bool = False):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.norm = nn.BatchNorm1d(1) if batchnorm else None

    def logits(self, z: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, L), before the sigmoid
        logits = self.net(z.flatten(2).transpose(1, 2)).transpose(1, 2)  # (B, 1, L)
        if self.norm is not None:
            logits = self.norm(logits)
        return logits.flatten(1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, L)
        return torch.sigmoid(self.logits(z))


class ConvScorer(nn.Module):
    """The released scorer: whole-map LayerNorm, conv3x3, ReLU, conv1x1, BatchNorm2d(1), sigmoid
    (`batchnorm=False`: the same without the BatchNorm, the `conv-nobn` variant)."""

    def __init__(self, channels: int, hidden: int, batchnorm: bool = True):
        super().__init__()
        layers = [
            nn.GroupNorm(1, channels, affine=False),
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, 1, 1),
        ]
        self.net = nn.Sequential(*layers, *([nn.BatchNorm2d(1)] if batchnorm else []))

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).flatten(1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(z))


def make_scorer(kind: str, channels: int, hidden: int) -> nn.Module:
    """mlp (paper's text), mlp-bn, conv (what the released code trains: conv + BatchNorm), conv-nobn."""
    if kind not in SCORERS:
        raise ValueError(kind)
    if kind.startswith("mlp"):
        return MLPScorer(channels, hidden, batchnorm=kind == "mlp-bn")
    return ConvScorer(channels, hidden, batchnorm=kind == "conv")


def select_top(scores: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the n largest scores per row, sorted ascending, and the (B, L) keep mask."""
    positions = scores.detach().topk(n, dim=1, sorted=False).indices.sort(dim=1).values
    keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, positions, True)
    return positions, keep


def gather_tokens(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x (B, L, C), positions (B, N) -> (B, N, C)."""
    return x.gather(1, positions[..., None].expand(-1, -1, x.shape[-1]))


class AdaptiveMask(nn.Module):
    def __init__(self, channels: int, ratio: float, scorer: str = "mlp", hidden: int = 256):
        super().__init__()
        self.ratio = ratio
        self.scorer = make_scorer(scorer, channels, hidden)

    def forward(
        self, z: torch.Tensor, images: torch.Tensor | None = None, fg: torch.Tensor | None = None
    ) -> MaskOutput:
        b, c, h, w = z.shape
        scores = self.scorer(z)  # (B, L)
        positions, keep = select_top(scores, num_kept(h * w, self.ratio))
        tokens = F.layer_norm(z.flatten(2).transpose(1, 2), (c,))  # per-token LN, no affine
        kept = gather_tokens(tokens, positions) * scores.gather(1, positions)[..., None]
        return MaskOutput(kept, positions, keep, scores)


def layer_norm_tokens(z: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, C): per-token LayerNorm without affine, the kept features' base."""
    return F.layer_norm(z.flatten(2).transpose(1, 2), (z.shape[1],))


class RandomMask(nn.Module):
    def __init__(self, ratio: float):
        super().__init__()
        self.ratio = ratio

    def forward(
        self, z: torch.Tensor, images: torch.Tensor | None = None, fg: torch.Tensor | None = None
    ) -> MaskOutput:
        b, c, h, w = z.shape
        positions, keep = select_top(torch.rand(b, h * w, device=z.device), num_kept(h * w, self.ratio))
        tokens = F.layer_norm(z.flatten(2).transpose(1, 2), (c,))
        return MaskOutput(gather_tokens(tokens, positions), positions, keep, None)


class NoMask(nn.Module):
    """VQGAN: every position kept, features untouched."""

    def forward(
        self, z: torch.Tensor, images: torch.Tensor | None = None, fg: torch.Tensor | None = None
    ) -> MaskOutput:
        b, c, h, w = z.shape
        positions = torch.arange(h * w, device=z.device).expand(b, -1)
        keep = torch.ones(b, h * w, dtype=torch.bool, device=z.device)
        return MaskOutput(z.flatten(2).transpose(1, 2), positions, keep, None)


def scatter_to_grid(values: torch.Tensor, positions: torch.Tensor, length: int, fill: torch.Tensor) -> torch.Tensor:
    """Put values (B, N, D) at positions (B, N) of a (B, L, D) grid filled with `fill` (D,).

    Differentiable in both `values` and `fill` (the learnable mask code)."""
    b, n, d = values.shape
    grid = fill.to(values.dtype).expand(b, length, d)
    return grid.scatter(1, positions[..., None].expand(-1, -1, d), values)


def positions_from_keep(keep: torch.Tensor) -> torch.Tensor:
    """(B, L) bool with the same count per row -> (B, N) kept positions, raster order."""
    n = int(keep[0].sum())
    return torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, :n]


def keep_from_positions(positions: torch.Tensor, length: int) -> torch.Tensor:
    return torch.zeros(positions.shape[0], length, dtype=torch.bool, device=positions.device).scatter_(
        1, positions, True
    )
