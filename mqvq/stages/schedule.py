"""Learning-rate schedules of both training stages (the released recipes)."""

from __future__ import annotations

import math

import torch


def lr_at(step: int, base: float, warmup: int, total: int, schedule: str) -> float:
    """Linear warm-up from 0 at step 0 (as released), then cosine to 0 (released stage-1 recipe) or constant."""
    if warmup and step < warmup:
        return base * step / warmup
    if schedule == "constant":
        return base
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Every parameter group follows the schedule, times its own `lr_scale` (default 1)."""
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
