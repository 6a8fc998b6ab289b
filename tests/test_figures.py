"""Figures render to non-empty pictures."""
import io

import numpy as np
import torch
from PIL import Image

from mqvq.reports import figures


def _png(fig) -> np.ndarray:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def test_speed_fid_and_pca_and_curves():
    img = _png(figures.speed_fid_figure([("VGGAN 0 %", 10.0, 12.0), ("MQ-VAE 25 %", 13.0, 8.0), ("MQ-VAE 50 %", 20.0, 9.0)], "FD-VGG16"))
    assert img.shape[0] > 100 and img.std() > 1
    img = _png(figures.codebook_pca_figure(torch.randn(32, 8), torch.tensor([1] * 20 + [0] * 12)))
    assert img.std() > 1
    img = _png(figures.loss_curves_figure({"train": ([1, 2, 3], [3.0, 2.0, 1.5]), "validation": ([3], [1.7])}))
    assert img.std() > 1


def test_importance_grid_shows_scores_and_kept_tokens():
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    keep = torch.rand(3, 16) > 0.5
    with_scores = figures.importance_grid(images, keep, (4, 4), torch.rand(3, 16))
    without = figures.importance_grid(images, keep, (4, 4))
    assert with_scores.shape[0] > without.shape[0] and with_scores.shape[1] == without.shape[1]
