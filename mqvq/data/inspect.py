"""What a data config resolves to: split sizes, classes, digests, foreground share, and a preview.

`mqvq data show` prints this before a long run, so a wrong root, layout or resolution shows up
in a second instead of after the first checkpoint.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from mqvq.config import DataConfig
from mqvq.data.datasets import FASHION_MNIST_DIR, build_dataset, check_images, eval_batches


def data_root(cfg: DataConfig) -> str:
    if cfg.name == "procedural":
        return "(generated)"
    if cfg.name == "fashion-mnist":
        return cfg.root or os.environ.get("MQVQ_FASHION_MNIST") or FASHION_MNIST_DIR
    return cfg.root


def load_splits(cfg: DataConfig) -> dict:
    """Both splits as the training and evaluation code will see them (errors are `UserError`s)."""
    splits = {split: build_dataset(cfg, split) for split in ("train", "test")}
    for ds in splits.values():
        check_images(ds)  # data show decodes every file, every time
    return splits


def describe(cfg: DataConfig, splits: dict | None = None, downsample: int = 0) -> dict:
    """Sizes, classes, digests and foreground share of both splits (`splits` from `load_splits`); with
    the model's `downsample` f, also the foreground token fraction on its latent grid (what a blind
    mask keeps on the foreground) and the mean brightness of foreground and background pixels."""
    out = {"name": cfg.name, "style": cfg.style if cfg.name == "procedural" else "", "root": data_root(cfg), "resolution": cfg.resolution,
           "layout": cfg.layout if cfg.name == "folder" else "", "augment": cfg.augment and cfg.name == "folder",
           "fit": cfg.fit if cfg.name == "fashion-mnist" else "", "splits": {}}
    for split, ds in (splits or load_splits(cfg)).items():
        info = {"images": len(ds), "digest": ds.digest(), "classes": list(ds.class_names)}
        labels = _labels(ds)
        if ds.num_classes and labels is not None:
            info["per_class"] = torch.bincount(labels[labels >= 0], minlength=ds.num_classes).tolist()
        fg = getattr(ds, "fg", None)
        if fg is not None:  # the share a random mask's kept tokens would land on (pixel level)
            info["foreground_fraction"] = round(float(fg.float().mean()), 4)
            info |= foreground_contrast(ds, downsample)
        if getattr(ds, "captions", None):
            info["captions"] = len(ds)  # COCO images without a caption are not listed
        out["splits"][split] = info
    return out


def foreground_contrast(ds, downsample: int = 0, batch_size: int = 500) -> dict:
    """Mean brightness (grey level in [0, 1]) of foreground and background pixels, and with f the
    share of latent tokens that are foreground (a token is when most of its f x f patch is)."""
    from mqvq.metrics.mask import token_foreground

    sums = torch.zeros(4, dtype=torch.float64)  # brightness on fg, fg pixels, brightness on bg, bg pixels
    tokens = torch.zeros(2, dtype=torch.float64)
    for batch in eval_batches(ds, batch_size):
        grey, fg = (batch["image"].mean(1) + 1) / 2, batch["fg"]
        sums += torch.stack([(grey * fg).sum(), fg.sum(), (grey * ~fg).sum(), (~fg).sum()]).double()
        if downsample:
            grid = (fg.shape[-2] // downsample, fg.shape[-1] // downsample)
            t = token_foreground(fg, grid)
            tokens += torch.tensor([t.sum().item(), t.numel()], dtype=torch.float64)
    out = {"brightness_foreground": round(float(sums[0] / sums[1].clamp_min(1)), 4),
           "brightness_background": round(float(sums[2] / sums[3].clamp_min(1)), 4)}
    if downsample:
        out |= {"foreground_token_fraction": round(float(tokens[0] / tokens[1].clamp_min(1)), 4), "downsample": downsample}
    return out


def _labels(ds) -> torch.Tensor | None:
    labels = getattr(ds, "labels", None)
    if labels is None:
        return None
    return labels if isinstance(labels, torch.Tensor) else torch.as_tensor(labels)


def preview(cfg: DataConfig, split: str = "train", n: int = 8, dataset=None) -> np.ndarray:
    """A uint8 picture of the split's first n images as training sees them (augmentation on for
    train), with a second row darkening the background where the dataset has foreground masks."""
    from mqvq.images import labelled_grid, mask_overlay, to_pixels

    ds = dataset if dataset is not None else build_dataset(cfg, split)
    batch = next(iter(eval_batches(ds, min(n, len(ds)))))
    rows = [(f"{split} images", to_pixels(batch["image"]))]
    if "fg" in batch:  # the kept-token overlay of Fig. 4, at pixel resolution
        rows.append(("foreground\n(background\ndarkened)", to_pixels(mask_overlay(batch["image"], batch["fg"], tuple(batch["fg"].shape[-2:])))))
    return labelled_grid(rows, [f"#{i + 1}" for i in range(rows[0][1].shape[0])], f"{cfg.name} {cfg.resolution} px")
