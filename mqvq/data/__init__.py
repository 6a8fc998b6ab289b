"""Datasets and batching. Data is read from local files only and never downloaded."""

from mqvq.data.datasets import (
    FolderImages,
    InMemoryImages,
    StepSampler,
    build_dataset,
    collate,
    eval_batches,
    train_loader,
)

__all__ = ["FolderImages", "InMemoryImages", "StepSampler", "build_dataset", "collate", "eval_batches", "train_loader"]
