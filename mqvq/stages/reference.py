"""Reference feature statistics of a dataset split, cached per (backend, feature resolution,
dataset digest, split) under <home>/fid_stats/."""
from __future__ import annotations

import hashlib
from pathlib import Path

from mqvq.data import eval_batches
from mqvq.files import atomic_write
from mqvq.images import to_uint8
from mqvq.metrics.frechet import FeatureStats, RunningStats
from mqvq.runtime import progress_bar


def reference_key(backend, dataset, split: str) -> str:
    return hashlib.sha256(f"{backend.name}:{backend.resolution}:{dataset.digest()}:{split}".encode()).hexdigest()[:16]


def reference_stats(backend, dataset, split: str, home: Path, batch_size: int = 64, workers: int = 0,
                    progress: bool = False) -> tuple[FeatureStats, str]:
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


def save_stats(stats: FeatureStats, path: Path) -> None:
    atomic_write(path, stats.save)
