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


def importance_grid(images: torch.Tensor, keep: torch.Tensor, grid: tuple[int, int], scores: torch.Tensor | None = None,
                    n: int = 8) -> np.ndarray:
    """Fig. 4: input, importance map (red high, blue low; adaptive masks only) and the kept tokens."""
    import matplotlib

    n = min(n, images.shape[0])
    rows = [to_uint8(images[:n])]
    if scores is not None:
        s = scores[:n].float()
        s = (s - s.min(1, keepdim=True).values) / (s.max(1, keepdim=True).values - s.min(1, keepdim=True).values).clamp_min(1e-8)
        heat = matplotlib.colormaps["jet"](s.reshape(n, *grid).cpu().numpy())[..., :3]  # (n, h, w, 3)
        heat = torch.from_numpy(heat).permute(0, 3, 1, 2).float() * 2 - 1
        heat = F.interpolate(heat, size=images.shape[-2:], mode="nearest")
        rows.append(to_uint8(0.5 * images[:n].float().cpu() + 0.5 * heat))
    rows.append(to_uint8(mask_overlay(images[:n].float().cpu(), keep[:n].cpu(), grid)))
    return image_grid(rows)


def codebook_pca(embed: torch.Tensor) -> np.ndarray:
    """(K, 2): the codebook on its first two principal components (float64 SVD)."""
    e = embed.detach().double().cpu()
    e = e - e.mean(0)
    _, _, v = torch.linalg.svd(e, full_matrices=False)
    return (e @ v[:2].T).numpy()


def scatter_codebook(ax, xy: np.ndarray, used: np.ndarray | None, size: float = 6, legend: bool = True) -> None:
    """Used codes in blue, unused in grey (Fig. 5's point: MQ-VAE uses more of its codebook)."""
    if used is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=size)
        return
    ax.scatter(xy[~used, 0], xy[~used, 1], s=size, c="lightgray", label=f"unused ({(~used).sum()})")
    ax.scatter(xy[used, 0], xy[used, 1], s=size, c="tab:blue", label=f"used ({used.sum()})")
    if legend:
        ax.legend(loc="best", fontsize=7)


def codebook_pca_figure(embed: torch.Tensor, counts: torch.Tensor | None = None, title: str = ""):
    """Fig. 5: the learned codebook projected on its first two principal components."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=120)
    scatter_codebook(ax, codebook_pca(embed), None if counts is None else (counts > 0).cpu().numpy())
    ax.set_title(title or f"codebook PCA (K = {embed.shape[0]})", fontsize=9)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    fig.tight_layout()
    return fig


def loss_curves_figure(curves: dict[str, tuple[list[int], list[float]]], title: str = "Stage-2 loss"):
    """Fig. 6a: training and validation loss against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for name, (steps, values) in curves.items():
        ax.plot(steps, values, label=name, marker="o" if len(steps) < 20 else None, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (code + position)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def speed_fid_figure(points: list[tuple[str, float, float]], metric: str = "FID"):
    """Fig. 6b: sampling speed against generation quality, one point per model (label, img/s, FD)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for label, speed, fd in points:
        ax.scatter([speed], [fd], s=30)
        ax.annotate(label, (speed, fd), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("sampling speed (images / s)")
    ax.set_ylabel(f"{metric} (lower is better)")
    ax.set_title(f"speed vs {metric}", fontsize=9)
    fig.tight_layout()
    return fig
