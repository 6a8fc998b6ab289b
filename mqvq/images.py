"""Images as arrays: [-1, 1] tensors to uint8, labelled grids, and the kept-token overlays every figure uses."""

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


def labelled_grid(
    rows: list[tuple[str, np.ndarray]], columns: list[str] | None = None, title: str = "", min_side: int = 96
) -> np.ndarray:
    """A picture a person can read: every image upscaled (nearest neighbour, so tokens stay crisp
    squares) to at least `min_side` px, each row labelled on the left, columns and a title on top.
    `rows`: (label, (B, H, W, 3) uint8), every row the same B, H and W."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=13)
    b, h, w, _ = rows[0][1].shape
    f = max(1, -(-min_side // h))
    gap = 4
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = lambda t: probe.multiline_textbbox((0, 0), t, font=font)[2] if t else 0  # noqa: E731
    text_h = lambda t: probe.multiline_textbbox((0, 0), t, font=font)[3] if t else 0  # noqa: E731
    left = max(text_w(label) for label, _ in rows) + 2 * gap
    top = (text_h(title) + gap if title else 0) + (text_h("\n".join(columns[:1])) + gap if columns else 0) + gap
    width = left + b * (w * f + gap)
    canvas = Image.new("RGB", (max(width, text_w(title) + 2 * gap), top + len(rows) * (h * f + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((gap, gap), title, fill="black", font=font)
    for i, name in enumerate(columns or []):
        x = left + i * (w * f + gap) + (w * f - text_w(name)) // 2
        draw.text((x, top - gap - text_h(name)), name, fill="dimgray", font=font)
    for r, (label, images) in enumerate(rows):
        y = top + r * (h * f + gap)
        draw.multiline_text((gap, y + (h * f - text_h(label)) // 2), label, fill="black", font=font)
        for i, img in enumerate(images):
            tile = Image.fromarray(img).resize((w * f, h * f), Image.NEAREST)
            canvas.paste(tile, (left + i * (w * f + gap), y))
    return np.asarray(canvas)


def mask_overlay(images: torch.Tensor, keep: torch.Tensor, grid: tuple[int, int], dim: float = 0.3) -> torch.Tensor:
    """Darken the regions whose tokens were masked; kept regions stay as they are."""
    k = keep.float().reshape(-1, 1, *grid)
    k = F.interpolate(k, size=images.shape[-2:], mode="nearest")
    return images * (dim + (1 - dim) * k) - (1 - dim) * (1 - k)


def reconstruction_grid(
    images: torch.Tensor, recon: torch.Tensor, keep: torch.Tensor, grid: tuple[int, int], n: int = 8, title: str = ""
) -> np.ndarray:
    """Labelled rows: input, kept tokens (masked ones tinted and outlined), reconstruction."""
    n = min(n, images.shape[0])
    x = upscale(images[:n].float().cpu(), 96)
    kept = keep[:n].cpu()
    rows = [
        ("input", to_pixels(x)),
        (
            f"kept tokens\n{int(kept[0].sum())} of {kept.shape[1]}\n(masked: tinted)",
            to_pixels(masked_view(x, kept, grid)),
        ),
        ("reconstruction", to_pixels(upscale(recon[:n].float().cpu(), 96))),
    ]
    return labelled_grid(rows, [f"#{i + 1}" for i in range(n)], title)


def sample_grid(images: np.ndarray, title: str = "", per_row: int = 8) -> np.ndarray:
    """(N, H, W, 3) uint8 samples in labelled rows of `per_row` (a last partial row is left out)."""
    n = len(images) // per_row * per_row or len(images)
    per_row = min(per_row, n)
    rows = [(f"samples\n{i + 1}-{i + per_row}", images[i : i + per_row]) for i in range(0, n, per_row)]
    return labelled_grid(rows, [f"#{i + 1}" for i in range(per_row)], title)


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
