"""Figures drawn with matplotlib from a run's tensors and metrics: Fig. 4 (importance and kept
tokens), where the mask keeps tokens, Fig. 5 (codebook PCA), Fig. 6a (loss curves) and the study figures."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mqvq.images import masked_view, to_pixels, upscale
from mqvq.metrics.mask import token_foreground


def importance_grid(
    images: torch.Tensor,
    keep: torch.Tensor,
    grid: tuple[int, int],
    scores: torch.Tensor | None = None,
    n: int = 8,
    title: str = "",
    fg: torch.Tensor | None = None,
):
    """Fig. 4 a person can read: each image upscaled (nearest) to >= 128 px; labelled rows: input,
    importance map (red high, blue low; adaptive only), kept tokens (masked ones tinted and outlined)
    and, where the data has one, the foreground the diagnostics count against."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, images.shape[0])
    x = upscale(images[:n].float().cpu(), 128)
    side = x.shape[-1]
    rows: list[tuple[str, np.ndarray]] = [("input", to_pixels(x))]
    if scores is not None:
        s = scores[:n].float().cpu()
        s = (s - s.min(1, keepdim=True).values) / (
            s.max(1, keepdim=True).values - s.min(1, keepdim=True).values
        ).clamp_min(1e-8)
        heat = matplotlib.colormaps["jet"](s.reshape(n, *grid).numpy())[..., :3]
        heat = torch.from_numpy(heat).permute(0, 3, 1, 2).float() * 2 - 1
        heat = F.interpolate(heat, size=(side, side), mode="nearest")
        rows.append(("importance\n(red high)", to_pixels(0.35 * x + 0.65 * heat)))
    kept = keep[:n].cpu()
    rows.append(
        (f"kept tokens, untinted\n({int(kept[0].sum())} of {kept.shape[1]})", to_pixels(masked_view(x, kept, grid)))
    )
    if fg is not None:
        fg_tok = token_foreground(fg[:n].cpu(), grid)
        rows.append(("foreground tokens,\nuntinted", to_pixels(masked_view(x, fg_tok, grid))))
    fig, axes = plt.subplots(len(rows), n, figsize=(1.45 * n + 0.9, 1.5 * len(rows) + 0.4), dpi=100, squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for i in range(n):
            ax = axes[r, i]
            ax.imshow(imgs[i], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def keep_frequency_figure(keep_freq: torch.Tensor, fg_freq: torch.Tensor | None = None, title: str = ""):
    """Where the mask keeps tokens, over the whole test split, beside where the object is."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("share of images keeping each token", keep_freq)]
    if fg_freq is not None:
        panels.insert(0, ("share of images with foreground there", fg_freq))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), dpi=110, squeeze=False)
    for ax, (label, m) in zip(axes[0], panels):
        m = np.asarray(m, dtype=float)
        im = ax.imshow(m, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        if m.shape[0] <= 16:
            for (i, j), v in np.ndenumerate(m):
                ax.text(
                    j,
                    i,
                    f"{v:.2f}"[1:] if v < 1 else "1",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if v < 0.6 else "black",
                )
        ax.set_title(label, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def keep_frequency_overview(beds: dict[str, list[tuple[str, np.ndarray]]], title: str = ""):
    """One line per data set: where the object is (its first panel, the foreground frequency) beside
    where each selector keeps tokens (keep frequency over the test split), on one colour scale, so a
    reader sees at a glance whether a mask follows the object or a fixed region."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(p) for p in beds.values())
    fig, axes = plt.subplots(
        len(beds), cols, figsize=(1.55 * cols + 0.6, 1.75 * len(beds) + 0.5), dpi=110, squeeze=False
    )
    im = None
    for i, (bed, panels) in enumerate(beds.items()):
        for j in range(cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(panels):
                ax.axis("off")
                continue
            label, m = panels[j]
            m = np.asarray(m, dtype=float)
            vmax = (
                max(float(m.max()), 1e-6) if j == 0 else 1.0
            )  # the foreground map on its own scale: it is often faint
            im_j = ax.imshow(m, cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
            im = im if j == 0 else im_j
            if j == 0:
                label += (
                    f" (scale 0-{m.max():.2f}; max/min {m.max() / m.min():.1f})"
                    if m.min() > 0
                    else f" (scale 0-{m.max():.2f}; min 0)"
                )
                ax.set_ylabel("\n".join(textwrap.wrap(bed, 22)), fontsize=6.5)
            ax.set_title("\n".join(textwrap.wrap(label, 24)), fontsize=6)
    if im is not None:
        fig.colorbar(
            im, ax=axes.ravel().tolist(), fraction=0.015, pad=0.01, label="share of test images keeping the token"
        )
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


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


STAGE2_LOSS = {"raster": "raster transformer: code loss", "stackformer": "Stackformer: code + position loss"}


def loss_curves_figure(
    rows: dict[str, dict[str, tuple[list[int], list[float]]]],
    kinds: dict[str, str] | None = None,
    title: str = "Stage-2 loss",
):
    """Fig. 6a: per model (row), validation loss solid and training loss dashed in one colour. Models
    whose losses measure different things (a raster transformer's code loss, Stackformer's code +
    position loss) get their own panel; the legend sits beside the panels, never on the curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    kinds = kinds or {}
    panels = list(dict.fromkeys(kinds.get(r, "") for r in rows))
    colours = matplotlib.colormaps["tab10" if len(rows) <= 10 else "tab20"].colors
    colour = {r: colours[i % len(colours)] for i, r in enumerate(rows)}
    width = 4.2 * len(panels) + 2.6
    fig, axes = plt.subplots(1, len(panels), figsize=(width, 3.6), dpi=120, squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for r, curves in rows.items():
            if kinds.get(r, "") != panel:
                continue
            for key, style in (("validation", "-"), ("train", "--")):
                if key in curves:
                    steps, values = curves[key]
                    ax.plot(
                        steps,
                        values,
                        style,
                        color=colour[r],
                        linewidth=1.6 if style == "-" else 0.9,
                        marker="o" if key == "validation" and len(steps) < 20 else None,
                        markersize=3,
                    )
        ax.set_title(STAGE2_LOSS.get(panel, panel or "loss"), fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats per token)")
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colour[r], linewidth=2) for r in rows]
    handles += [
        Line2D([], [], color="black", linestyle="-"),
        Line2D([], [], color="black", linestyle="--", linewidth=0.9),
    ]
    right = 1 - 2.5 / width  # the legend's column, kept out of the panels
    fig.legend(
        handles,
        [*rows, "validation", "train"],
        loc="center left",
        bbox_to_anchor=(right, 0.5),
        fontsize=7.5,
        frameon=False,
    )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, right, 1))
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


def ratio_curves_figure(panels: dict[str, dict[str, list[tuple[float, float, float]]]], title: str = ""):
    """Table 6 as curves: per metric (a panel), one line per mask (the paper's, a learned one, random,
    the oracle) over the mask ratio, each point a mean over seeds with its std as an error bar; VQGAN
    sits at 0 % on every line that starts from it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows + 0.4), dpi=120, squeeze=False)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    for ax, (metric, lines) in zip(axes.flat, panels.items()):
        for i, (label, points) in enumerate(lines.items()):
            points = sorted(points)
            x, y, e = (np.array([p[k] for p in points]) for k in range(3))
            ax.errorbar(
                100 * x + (i - len(lines) / 2) * 0.6,
                y,
                yerr=e,
                marker="o",
                markersize=3.5,
                linewidth=1.2,
                capsize=2,
                label=label,
            )
        ax.set_xlabel("mask ratio (%)", fontsize=8)
        ax.set_title(metric, fontsize=8.5)
        ax.tick_params(labelsize=7)
        ax.set_xticks(sorted({round(100 * p[0]) for pts in lines.values() for p in pts}))
    axes[0, 0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def mask_curves_figure(
    curves: dict[str, list[tuple[list[int], list[float]]]],
    baselines: dict[str, float] | None = None,
    title: str = "",
    ylabel: str = "kept tokens on the foreground",
):
    """Foreground share over training, one panel per row: every seed as a thin line (a mask that locks
    in early shows as flat lines), their mean thick, the foreground token fraction (what a random mask
    gets, per row: it depends on the data's fit) dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(curves)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.8 * cols + 0.4, 2.4 * rows + 0.6), dpi=120, squeeze=False, sharex=True, sharey=True
    )
    for ax, (label, runs) in zip(axes.flat, curves.items()):
        colour = (
            "tab:green" if "random" in label and "masks random" not in label else "tab:blue"
        )  # green: the blind mask
        for steps, values in runs:
            ax.plot(steps, values, color=colour, linewidth=0.8, alpha=0.6)
        common = sorted(set.intersection(*(set(st) for st, _ in runs)))
        if len(runs) > 1 and common:
            mean = np.array([[dict(zip(st, v))[t] for t in common] for st, v in runs]).mean(0)
            ax.plot(common, mean, color=colour, linewidth=2.0)
        base = (baselines or {}).get(label)
        if base is not None:
            ax.axhline(base, color="black", linestyle=":", linewidth=1)
        import textwrap

        ax.set_title(
            "\n".join(textwrap.wrap(f"{label} (n={len(runs)})", 44))
            + (f"\nforeground fraction {base:.2f}" if base is not None else ""),
            fontsize=7,
        )
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=7.5)
    for ax in axes[-1, :]:
        ax.set_xlabel("training step", fontsize=7.5)
    note = "dotted: the foreground token fraction, what a mask blind to content keeps" if baselines else ""
    fig.suptitle("\n".join(t for t in (title, note) if t), fontsize=8.5)
    fig.tight_layout()
    return fig
