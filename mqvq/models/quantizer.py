"""Vector quantizer: fp32 nearest-code search; EMA codebook with dead-code restart, or the
VQGAN codebook loss.

Runs outside autocast: bf16 distances flip 1-6 % of assignments. The EMA variant follows
the released code (RQ-VAE's `VQEmbedding`): decay 0.99, Laplace-smoothed cluster sizes,
every training forward restarts codes whose EMA usage fell below 1 with random batch vectors
(tiled with small noise when the batch has fewer vectors than codes), statistics all-reduced
and restart vectors broadcast from rank 0 under DDP. Its loss is only the commitment term
beta * |z - sg(q)|^2 (the released code also adds |q - sg(z)|^2, which has no gradient
path under EMA). The `loss` variant is the VQGAN codebook loss with beta on the commitment
term: |sg(z) - q|^2 + beta * |z - sg(q)|^2 (taming's legacy code put beta on the wrong term).
Everything is tensor ops on the device: no host sync, no Python loop over vectors.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


def fp32(device: torch.device):
    """Leave autocast for the enclosed ops (meta tensors, used to prove sync-freedom, have no autocast)."""
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class VectorQuantizer(nn.Module):
    def __init__(
        self,
        codebook_size: int,
        dim: int,
        beta: float = 0.25,
        update: str = "ema",
        decay: float = 0.99,
        restart_dead: bool = True,
        dead_threshold: float = 1.0,
        eps: float = 1e-5,
    ):
        super().__init__()
        self.size, self.dim, self.beta, self.update = codebook_size, dim, beta, update
        self.decay, self.restart_dead, self.dead_threshold, self.eps = decay, restart_dead, dead_threshold, eps
        init = torch.empty(codebook_size, dim).uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
        if update == "ema":
            self.register_buffer("embed", init)
            self.register_buffer("cluster_size", torch.zeros(codebook_size))
            # as released: the EMA sum starts from N(0, 1), untouched by the uniform initialisation of the
            # codes, so the uniform init only decides the first assignment
            self.register_buffer("embed_sum", torch.randn(codebook_size, dim))
        elif update == "loss":
            self.embed = nn.Parameter(init)
        else:
            raise ValueError(update)

    def codes_to_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        return F.embedding(codes, self.embed)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """argmin_k |z - e_k|^2 for z (M, D) in fp32; |z|^2 is constant per row and dropped."""
        with fp32(z.device):
            e = self.embed.float()
            return torch.addmm((e * e).sum(1)[None], z.float(), e.t(), alpha=-2.0).argmin(dim=1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """z: (..., D). Returns straight-through quantized z (same shape, fp32), codes (...),
        the quantizer loss and per-code counts of this batch (K,), all on z's device."""
        with fp32(z.device):
            return self._forward(z)

    def _forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        shape = z.shape
        flat = z.reshape(-1, self.dim).float()
        codes = self.nearest(flat)
        q = self.codes_to_vectors(codes)
        counts = torch.zeros(self.size, device=flat.device).index_add_(
            0, codes, torch.ones_like(codes, dtype=torch.float)
        )
        if self.update == "ema":
            loss = self.beta * F.mse_loss(flat, q.detach())
            if self.training:
                self._ema_update(flat.detach(), codes, counts)
        else:
            loss = F.mse_loss(q, flat.detach()) + self.beta * F.mse_loss(flat, q.detach())
        q = flat + (q - flat).detach()  # straight-through estimator
        return q.reshape(shape), codes.reshape(shape[:-1]), loss, {"counts": counts}

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, codes: torch.Tensor, counts: torch.Tensor) -> None:
        sums = torch.zeros_like(self.embed_sum).index_add_(0, codes, flat)
        counts = counts.clone()
        if _dist():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        if self.restart_dead:
            m = flat.shape[0]
            if m >= self.size:
                candidates = flat[torch.randperm(m, device=flat.device)[: self.size]]
            else:  # fewer vectors than codes: tile with noise so restarted codes differ (uniform [0, 0.01/sqrt(d)), as released)
                reps = -(-self.size // m)
                tiled = flat.repeat(reps, 1)
                tiled = tiled + torch.rand_like(tiled) * (0.01 / self.dim**0.5)
                candidates = tiled[torch.randperm(tiled.shape[0], device=flat.device)[: self.size]]
            if _dist():
                dist.broadcast(candidates, 0)
            alive = (self.cluster_size >= self.dead_threshold)[:, None]
            self.embed_sum.copy_(torch.where(alive, self.embed_sum, candidates))
            self.cluster_size.copy_(torch.where(alive[:, 0], self.cluster_size, torch.ones_like(self.cluster_size)))
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.size * self.eps) * n
        self.embed.copy_(self.embed_sum / smoothed[:, None])


def perplexity(counts: torch.Tensor) -> torch.Tensor:
    p = counts / counts.sum().clamp_min(1)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum())
