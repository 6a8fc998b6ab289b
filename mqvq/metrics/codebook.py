"""Codebook usage: the share of codes used (Table 6) and the share an evenly used codebook would need."""

from __future__ import annotations

import torch


def codebook_usage(counts: torch.Tensor) -> float:
    """Percentage of the K codes used at least once (Table 6: over the entire test set)."""
    return 100.0 * (counts > 0).float().mean().item()


def effective_usage(perplexity: float, codebook_size: int) -> float:
    """Percentage of the K codes an evenly used codebook with the same code entropy would use:
    100 * exp(H) / K. Unlike `usage` it does not saturate when dead-code restart keeps every code
    alive: a code used a handful of times in the whole split hardly counts."""
    return 100.0 * perplexity / codebook_size
