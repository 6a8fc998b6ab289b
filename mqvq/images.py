"""Images as arrays: [-1, 1] tensors to uint8, grids of rows, and the kept-token overlays every figure uses."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> uint8 on the same device, as written to PNG (metrics see what a user would save)."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_pixels(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8 numpy: what a PNG holds."""
    return to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()


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
    rows = [to_pixels(images[:n]), to_pixels(mask_overlay(images[:n], keep[:n], grid)), to_pixels(recon[:n])]
    return image_grid(rows)


def upscale(images: torch.Tensor, side: int) -> torch.Tensor:
    """Nearest-neighbour upscale by an integer factor to at least `side` pixels (tokens stay crisp squares)."""
    factor = max(1, -(-side // images.shape[-1]))
    return images if factor == 1 else F.interpolate(images.float(), scale_factor=factor, mode="nearest")


def _token_outline(keep: torch.Tensor, grid: tuple[int, int], size: int) -> torch.Tensor:
    """(B, size, size) bool: the edges of masked tokens (1 px lines on the upscaled grid)."""
    k = F.interpolate(keep.float().reshape(-1, 1, *grid), size=(size, size), mode="nearest")[:, 0]
    step = size // grid[0]
    lines = torch.zeros(size, size, dtype=torch.bool)
    lines[::step, :] = True
    lines[:, ::step] = True
    return (k < 0.5) & lines


def masked_view(images: torch.Tensor, keep: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Masked tokens tinted blue-grey with their outlines drawn, kept tokens untouched: visible on any
    background (darkening alone hides a masked black background)."""
    k = F.interpolate(keep.float().reshape(-1, 1, *grid), size=images.shape[-2:], mode="nearest")
    tint = torch.tensor([-0.2, 0.0, 0.6]).view(1, 3, 1, 1)
    out = images.float() * (0.4 + 0.6 * k) + (1 - k) * 0.6 * tint
    edges = _token_outline(keep, grid, images.shape[-1])[:, None].expand(-1, 3, -1, -1)
    return torch.where(edges, torch.tensor([0.2, 0.5, 1.0]).view(1, 3, 1, 1).expand_as(out), out).clamp(-1, 1)
