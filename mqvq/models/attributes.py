"""A small CNN that reads a procedural image's caption facts back (kind, colour, place, count,
background): the offline check that text-conditional samples show what their caption asks for.

It sees images at 32x32 (any resolution is resized), so the same classifier scores every profile's
samples of one dataset; one linear head per attribute over a 4x4 map of a 4-layer conv trunk.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

SIDE = 32


class AttributeNet(nn.Module):
    def __init__(self, classes: dict[str, int], width: int = 32):
        super().__init__()
        self.classes = dict(classes)

        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))

        # one conv per scale keeps training to a couple of CPU minutes; places need where things
        # are, so the heads read a 4x4 map rather than a global average
        self.trunk = nn.Sequential(
            block(3, width),
            block(width, 2 * width),
            block(2 * width, 4 * width),
            nn.Conv2d(4 * width, 4 * width, 3, padding=1),
            nn.BatchNorm2d(4 * width),
            nn.ReLU(),
            nn.Flatten(),
        )
        feat = 4 * width * 16
        self.heads = nn.ModuleDict({name: nn.Linear(feat, n) for name, n in self.classes.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, 3, H, W) in [-1, 1] -> {attribute: logits (B, n)}."""
        if x.shape[-1] != SIDE:
            x = F.interpolate(x, size=(SIDE, SIDE), mode="bilinear", align_corners=False, antialias=True)
        h = self.trunk(x)
        return {name: head(h) for name, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: logits.argmax(-1) for name, logits in self(x).items()}


def uint8_to_input(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) or (B, 3, H, W) uint8 -> (B, 3, H, W) float in [-1, 1]."""
    if images.shape[-1] == 3:
        images = images.permute(0, 3, 1, 2)
    return images.float().div(127.5).sub(1.0)
