"""Stage-1 tokens for stage 2: (codes, positions) in raster order, computed once per
(stage-1 checkpoint, dataset, split) and cached under <home>/tokens/.

The cache key hashes the checkpoint file's bytes and the dataset digest, so retraining stage 1
or changing the data invalidates it; the file is written atomically.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from mqvq.data.datasets import eval_batches
from mqvq.files import file_digest
from mqvq.models.checkpoint import atomic_save
from mqvq.models.mqvae import MQVAE

TOKENS_FORMAT = "mqvq-tokens-v2"  # v2: the source image of each sequence (captions follow it)


@dataclass
class TokenSet:
    codes: torch.Tensor  # (M, N) int64, raster order
    positions: torch.Tensor  # (M, N) int64, increasing
    labels: torch.Tensor  # (M,) int64, -1 when the dataset has none
    grid: tuple[int, int]
    codebook_size: int
    index: torch.Tensor  # (M,) int64: the dataset image each sequence encodes (flipped copies repeat it)

    def __len__(self) -> int:
        return self.codes.shape[0]


@torch.no_grad()
def tokenize(
    model: MQVAE, dataset, batch_size: int, device: torch.device, flip: bool = False, limit: int = 0
) -> TokenSet:
    """Encode every image (the first `limit` if set, and mirror images when `flip`) with a frozen stage-1 model."""
    model.eval().to(device)
    codes, positions, labels, index = [], [], [], []
    grid, done = None, 0
    for batch in eval_batches(dataset, batch_size, limit):
        x = batch["image"].to(device)
        fg = batch["fg"].to(device) if "fg" in batch else None  # the oracle-foreground selector reads it
        views = [(x, fg), (x.flip(-1), None if fg is None else fg.flip(-1))] if flip else [(x, fg)]
        for v, v_fg in views:
            enc = model.encode(v, v_fg)
            codes.append(enc.codes.cpu())
            positions.append(enc.positions.cpu())
            labels.append(batch["label"].cpu())
            index.append(torch.arange(done, done + x.shape[0]))
            grid = enc.grid
        done += x.shape[0]
    return TokenSet(
        torch.cat(codes),
        torch.cat(positions),
        torch.cat(labels),
        grid,
        model.config.quantizer.codebook_size,
        torch.cat(index),
    )


def _read_tokens(path: Path) -> TokenSet | None:
    """The cached token set, or None when the file is truncated, foreign or from another format: the
    cache is derived data, so the caller rebuilds it."""
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
        if d.get("format") != TOKENS_FORMAT:
            return None
        return TokenSet(
            d["codes"].long(), d["positions"].long(), d["labels"], tuple(d["grid"]), d["codebook_size"], d["index"]
        )
    except Exception:  # any damage means rebuild
        return None


def cached_tokens(
    home: Path,
    checkpoint: Path,
    model: MQVAE,
    dataset,
    split: str,
    batch_size: int,
    device: torch.device,
    flip: bool,
    limit: int = 0,
) -> TokenSet:
    extra = f":{limit}" if limit and limit < len(dataset) else ""
    key = hashlib.sha256(
        f"{file_digest(checkpoint)}:{dataset.digest()}:{split}:{int(flip)}{extra}".encode()
    ).hexdigest()[:20]
    path = home / "tokens" / f"{key}.pt"
    if path.is_file():
        cached = _read_tokens(path)
        if cached is not None:
            return cached
    ts = tokenize(model, dataset, batch_size, device, flip, limit)
    small = torch.int16 if max(ts.codebook_size, ts.grid[0] * ts.grid[1]) < 2**15 else torch.int32
    atomic_save(
        {
            "format": TOKENS_FORMAT,
            "codes": ts.codes.to(small),
            "positions": ts.positions.to(small),
            "labels": ts.labels,
            "grid": list(ts.grid),
            "codebook_size": ts.codebook_size,
            "index": ts.index,
        },
        path,
    )
    return ts
