"""Image grids: reconstructions with the kept-token mask (paper Fig. 4 style)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def image_grid(rows: list[np.ndarray], pad: int = 2) -> np.ndarray:
    """Stack rows of (B, H, W, 3) uint8 images into one (R*(H+pad), B*(W+pad), 3) picture."""
    b, h, w, _ = rows[0].shape
    out = np.full((len(rows) * (h + pad) + pad, b * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for i in range(row.shape[0]):
            y, x = pad + r * (h + pad), pad + i * (w + pad)
            out[y: y + h, x: x + w] = row[i]
    return out


def mask_overlay(images: torch.Tensor, keep: torch.Tensor, grid: tuple[int, int], dim: float = 0.3) -> torch.Tensor:
    """Darken the regions whose tokens were masked; kept regions stay as they are."""
    k = keep.float().reshape(-1, 1, *grid)
    k = F.interpolate(k, size=images.shape[-2:], mode="nearest")
    return images * (dim + (1 - dim) * k) - (1 - dim) * (1 - k)


def reconstruction_grid(images: torch.Tensor, recon: torch.Tensor, keep: torch.Tensor, grid: tuple[int, int],
                        n: int = 8) -> np.ndarray:
    """Rows: input, kept tokens (masked regions darkened), reconstruction."""
    n = min(n, images.shape[0])
    rows = [to_uint8(images[:n]), to_uint8(mask_overlay(images[:n], keep[:n], grid)), to_uint8(recon[:n])]
    return image_grid(rows)
