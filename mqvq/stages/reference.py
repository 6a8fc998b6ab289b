"""Reference feature statistics of a dataset split, cached per (backend, feature resolution,
dataset digest, split) under <home>/fid_stats/."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from mqvq.data import build_dataset, eval_batches
from mqvq.files import atomic_write
from mqvq.images import to_uint8
from mqvq.metrics.frechet import FeatureStats, RunningStats
from mqvq.runtime import progress_bar


def reference_key(backend, dataset, split: str) -> str:
    return hashlib.sha256(f"{backend.name}:{backend.resolution}:{dataset.digest()}:{split}".encode()).hexdigest()[:16]


def reference_stats(
    backend, dataset, split: str, home: Path, batch_size: int = 64, workers: int = 0, progress: bool = False
) -> tuple[FeatureStats, str]:
    """(stats, digest) of real images; computed once, then read from the cache."""
    key = reference_key(backend, dataset, split)
    path = home / "fid_stats" / f"{backend.name}-{key}.npz"
    if path.is_file():
        return FeatureStats.load(path), key
    stats = RunningStats(backend.dim)
    with progress_bar(progress) as bar:
        task = bar.add_task(f"reference {backend.name} {split}", total=len(dataset), info="")
        for batch in eval_batches(dataset, batch_size, workers=workers):
            stats.update(backend(to_uint8(batch["image"]))[0])
            bar.advance(task, batch["image"].shape[0])
    result = stats.finalize()
    save_stats(result, path)
    return result, key


def sample_reference(
    cfg, backend, home: Path, batch_size: int, workers: int = 0, progress: bool = False
) -> tuple[FeatureStats, str, str]:
    """(stats, digest, split) of the real images a model's samples are measured against (FID /
    FD-VGG16): the whole `eval.fid_reference` split of its stage-1 data. The one rule for `mqvq eval`
    and sampling searches, so that one metric name always means one reference."""
    split = cfg.eval.fid_reference
    real = build_dataset(dataclasses.replace(cfg.stage1.data, limit_train=0), split)  # limit_train never shortens it
    stats, key = reference_stats(backend, real, split, home, batch_size, workers, progress)
    return stats, key, split


def save_stats(stats: FeatureStats, path: Path) -> None:
    atomic_write(path, stats.save)
