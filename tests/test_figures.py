"""Figures render to non-empty pictures."""

import io

import numpy as np
import torch
from PIL import Image

from mqvq import figures, images


def _png(fig) -> np.ndarray:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def test_speed_fid_and_pca_and_curves():
    img = _png(
        figures.speed_fid_figure(
            [("VGGAN 0 %", 10.0, 12.0), ("MQ-VAE 25 %", 13.0, 8.0), ("MQ-VAE 50 %", 20.0, 9.0)], "FD-VGG16"
        )
    )
    assert img.shape[0] > 100 and img.std() > 1
    img = _png(figures.codebook_pca_figure(torch.randn(32, 8), torch.tensor([1] * 20 + [0] * 12)))
    assert img.std() > 1
    img = _png(
        figures.loss_curves_figure({"vqgan": {"train": ([1, 2, 3], [3.0, 2.0, 1.5]), "validation": ([3], [1.7])}})
    )
    assert img.std() > 1


def test_importance_grid_shows_scores_and_kept_tokens():
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    keep = torch.rand(3, 16) > 0.5
    with_scores = _png(figures.importance_grid(images, keep, (4, 4), torch.rand(3, 16), title="t"))
    without = _png(figures.importance_grid(images, keep, (4, 4)))
    assert with_scores.shape[0] > without.shape[0] and with_scores.shape[1] == without.shape[1]
    with_fg = _png(figures.importance_grid(images, keep, (4, 4), fg=torch.rand(3, 16, 16) > 0.5))
    assert with_fg.shape[0] > without.shape[0]


def test_masked_tokens_are_visible_on_a_black_background():
    """Fig. 4's point: on Fashion-MNIST's black background a masked token must look different from a kept one."""
    black = -torch.ones(1, 3, 32, 32)
    keep = torch.tensor([[True, False] * 8])
    view = images.masked_view(images.upscale(black, 128), keep, (4, 4))
    kept_px, masked_px = view[0, :, 10, 10], view[0, :, 10, 42]  # inside token 0 (kept) and token 1 (masked)
    assert torch.equal(kept_px, black[0, :, 0, 0]) and (masked_px - kept_px).abs().max() > 0.3
    assert images.upscale(black, 128).shape[-1] == 128


def test_keep_frequency_figure():
    img = _png(figures.keep_frequency_figure(torch.rand(8, 8), torch.rand(8, 8), "where"))
    assert img.shape[1] > img.shape[0] and img.std() > 1


def test_mask_curves_draw_each_rows_own_foreground_fraction():
    """Padding and resizing 28 -> 32 give different foreground fractions: each panel's dotted
    random-mask line must be its own row's, not an average over rows."""
    curves = {"padded": [([0, 100], [0.3, 0.35])], "resized": [([0, 100], [0.6, 0.7])]}
    fig = figures.mask_curves_figure(curves, {"padded": 0.39, "resized": 0.6})
    lines = {
        ax.get_title(): [ln.get_ydata()[0] for ln in ax.get_lines() if ln.get_linestyle() == ":"]
        for ax in fig.axes
        if ax.get_title()
    }
    assert lines == {"padded (n=1)\nforeground fraction 0.39": [0.39], "resized (n=1)\nforeground fraction 0.60": [0.6]}
