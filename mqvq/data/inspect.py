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


def describe(cfg: DataConfig, splits: dict | None = None) -> dict:
    """Sizes, classes, digests and foreground share of both splits (`splits` from `load_splits`)."""
    out = {
        "name": cfg.name,
        "style": cfg.style if cfg.name == "procedural" else "",
        "placement": f"{cfg.placement}" + ("" if cfg.holdout == "none" else f", {cfg.holdout} held out")
        if cfg.name == "procedural"
        else "",
        "root": data_root(cfg),
        "resolution": cfg.resolution,
        "layout": cfg.layout if cfg.name == "folder" else "",
        "augment": cfg.augment and cfg.name == "folder",
        "fit": cfg.fit if cfg.name == "fashion-mnist" else "",
        "splits": {},
    }
    for split, ds in (splits or load_splits(cfg)).items():
        info = {"images": len(ds), "digest": ds.digest(), "classes": list(ds.class_names)}
        labels = _labels(ds)
        if ds.num_classes and labels is not None:
            info["per_class"] = torch.bincount(labels[labels >= 0], minlength=ds.num_classes).tolist()
        fg = getattr(ds, "fg", None)
        if fg is not None:  # the share a random mask's kept tokens would land on (pixel level)
            info["foreground_fraction"] = round(float(fg.float().mean()), 4)
        if getattr(ds, "captions", None):
            info["captions"] = len(ds)  # COCO images without a caption are not listed
        out["splits"][split] = info
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
        rows.append(
            (
                "foreground\n(background\ndarkened)",
                to_pixels(mask_overlay(batch["image"], batch["fg"], tuple(batch["fg"].shape[-2:]))),
            )
        )
    return labelled_grid(rows, [f"#{i + 1}" for i in range(rows[0][1].shape[0])], f"{cfg.name} {cfg.resolution} px")
