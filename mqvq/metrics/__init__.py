"""Metrics: plain functions over tensors and features: Fréchet distances and their feature backends, IS, codebook usage, mask quality.
Their names, labels and directions: `registry.py`."""

from mqvq.metrics.registry import REGISTRY, frechet, metric_family, metric_names, metric_stage

__all__ = ["REGISTRY", "frechet", "metric_family", "metric_names", "metric_stage"]
