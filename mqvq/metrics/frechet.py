"""Feature statistics, the Fréchet distance (float64, eigenvalue route) and the Inception Score.

FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2), with tr((S1 S2)^1/2) = sum of the square
roots of the eigenvalues of S1^1/2 S2 S1^1/2 (symmetric PSD, so `eigh` is exact and stable). No
`scipy.linalg.sqrtm`: it is slow at 2048 dims and its `disp` argument, which clean-fid passes,
was removed in SciPy 1.18.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


class RunningStats:
    """Streaming mean and covariance in float64 (50k x 2048 features never need to be held)."""

    def __init__(self, dim: int):
        self.n = 0
        self.sum = np.zeros(dim, dtype=np.float64)
        self.outer = np.zeros((dim, dim), dtype=np.float64)

    def update(self, feats: torch.Tensor | np.ndarray) -> None:
        x = (
            feats.detach().double().cpu().numpy()
            if isinstance(feats, torch.Tensor)
            else np.asarray(feats, dtype=np.float64)
        )
        self.n += x.shape[0]
        self.sum += x.sum(0)
        self.outer += x.T @ x

    def finalize(self) -> "FeatureStats":
        if self.n < 2:
            raise ValueError("at least two feature vectors are needed for a covariance")
        mu = self.sum / self.n
        sigma = (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return FeatureStats(mu, (sigma + sigma.T) / 2, self.n)


@dataclass
class FeatureStats:
    mu: np.ndarray
    sigma: np.ndarray
    n: int

    def save(self, path) -> None:
        np.savez(path, mu=self.mu, sigma=self.sigma, n=self.n)

    @classmethod
    def load(cls, path) -> "FeatureStats":
        d = np.load(path)
        return cls(d["mu"], d["sigma"], int(d["n"]))


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    s1 = _sqrt_psd(a.sigma)
    middle = s1 @ b.sigma @ s1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = a.mu - b.mu
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * tr_sqrt)


def inception_score(logits: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) over `splits` chunks (Salimans et al.): mean and std."""
    p = torch.softmax(logits.double(), dim=1)
    scores = []
    for chunk in p.chunk(splits):
        py = chunk.mean(0, keepdim=True)
        kl = (chunk * (torch.log(chunk.clamp_min(1e-30)) - torch.log(py.clamp_min(1e-30)))).sum(1).mean()
        scores.append(torch.exp(kl).item())
    return float(np.mean(scores)), float(np.std(scores))
