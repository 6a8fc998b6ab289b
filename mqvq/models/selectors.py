"""Token selectors beyond the paper's: each keeps the N = (1 - ratio) L positions with the highest
score, in raster order, with the random mask's unit-gain features LayerNorm(z) (no score gain), so
that they differ from each other and from a blind mask only in *which* tokens they keep.

The paper's selector (`masking.AdaptiveMask`, selector `gain`) learns only through the gain s on
the kept features: the top-N choice itself has no gradient (reports/cpu/README.md). These give the
choice a learning signal, or replace learning by a rule, as bounds:

    damage            a scorer predicts the reconstruction damage of dropping each token (HPM,
                      Wang et al., CVPR 2023; AdapTok): its target comes from a random mask and its
                      complement (`damage_targets`), its loss is a pairwise ranking loss (`ranking_loss`)
    straight-through  hard top-N of s + Gumbel noise forward, sigmoid((s + g - t) / tau) backward with
                      t the detached midpoint between the N-th and (N+1)-th values of s + g
                      (DynamicViT, Rao et al., NeurIPS 2021; DQ-VAE's router, Huang et al., CVPR 2023)
    entropy           grey-level histogram entropy of each token's patch, 32 bins (DQ-VAE's rule)
    oracle-foreground the share of each token's patch on the ground-truth foreground (a bound)
    centre            the N tokens nearest the grid's centre, the same for every image (the position
                      prior: the bar a learned selector must beat where objects sit in the middle)

Revision 2 (MaskConfig.revision): the straight-through surrogate is centred on the top-N threshold
instead of 0, and the damage and straight-through signals read the codebook before the step's EMA
update; the damage probes are two masks of the training mask's size (docs/faithfulness.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from mqvq.config import num_kept
from mqvq.config.schema import NEEDS_FOREGROUND, SELECTORS
from mqvq.errors import UserError
from mqvq.models.masking import MaskOutput, gather_tokens, layer_norm_tokens, make_scorer, select_top

ENTROPY_BINS = 32  # DQ-VAE's histogram


def _kept(z: torch.Tensor, scores: torch.Tensor, ratio: float, relaxed: torch.Tensor | None = None) -> MaskOutput:
    """Top-N of `scores` with unit-gain features; `scores` are returned for the diagnostics."""
    b, c, h, w = z.shape
    positions, keep = select_top(scores, num_kept(h * w, ratio))
    return MaskOutput(gather_tokens(layer_norm_tokens(z), positions), positions, keep, scores.detach(), relaxed)


def _patches(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) -> (B, L, f_h * f_w): the pixels of each token's patch, tokens in raster order."""
    b, hh, ww = x.shape
    h, w = grid
    fh, fw = hh // h, ww // w
    return x.reshape(b, h, fh, w, fw).permute(0, 1, 3, 2, 4).reshape(b, h * w, fh * fw)


def patch_entropy(images: torch.Tensor, grid: tuple[int, int], bins: int = ENTROPY_BINS) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, L): entropy (nats) of each patch's grey-level histogram."""
    grey = ((images.float().mean(1) + 1.0) / 2.0).clamp(0.0, 1.0)
    idx = _patches((grey * bins).long().clamp_max(bins - 1), grid)  # (B, L, P)
    counts = torch.zeros(*idx.shape[:2], bins, device=images.device).scatter_add_(
        2, idx, torch.ones_like(idx, dtype=torch.float)
    )
    p = counts / idx.shape[-1]
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1)


def foreground_share(fg: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) bool -> (B, L): the share of each token's patch that is foreground."""
    return F.adaptive_avg_pool2d(fg[:, None].float(), grid).flatten(1)


def pooled_error(images: torch.Tensor, recon: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, L): mean absolute pixel error over each token's patch (channels averaged)."""
    err = (recon.float() - images.float()).abs().mean(1, keepdim=True)
    return F.adaptive_avg_pool2d(err, grid).flatten(1)


def probe_masks(
    batch: int, length: int, kept: int, device=None, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two random keep masks of `kept` tokens each (the size the decoder trains at) that differ on
    2 min(kept, L - kept) tokens: each of those is kept by one mask and dropped by the other. At a 50 %
    mask they are a mask and its complement; at other ratios a mask and its complement would keep
    different counts, and the decoder restores a token worse under the sparser one whatever it is."""
    m = min(kept, length - kept)
    order = (
        torch.rand(batch, length, generator=generator, device=generator.device if generator is not None else device)
        .argsort(1)
        .to(device)
    )
    first, second = order[:, :m], order[:, m : 2 * m]
    if kept <= length - kept:  # two disjoint kept sets
        base = torch.zeros(batch, length, dtype=torch.bool, device=device)
        return base.scatter(1, first, True), base.scatter(1, second, True)
    base = torch.ones(batch, length, dtype=torch.bool, device=device)  # two disjoint dropped sets
    return base.scatter(1, first, False), base.scatter(1, second, False)


def damage_targets(
    decode, images: torch.Tensor, keep_a: torch.Tensor, keep_b: torch.Tensor, grid: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """((B, L) damage, (B, L) valid): what dropping each token costs, as a counterfactual. `decode(keep)`
    reconstructs the images keeping the tokens `keep` marks; it runs under two probe masks of one size
    (`probe_masks`), and a token kept by one and dropped by the other gets its patch error when dropped
    minus its patch error when kept (a token whose patch no decoder gets right is not important for
    that). Tokens both masks treat alike have no target (valid False)."""
    a, b = pooled_error(images, decode(keep_a), grid), pooled_error(images, decode(keep_b), grid)
    return torch.where(keep_a, b - a, a - b), keep_a ^ keep_b


def ranking_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """HPM's relative loss: for every pair (i, j) of valid tokens of one image with target_i > target_j,
    -log sigmoid(pred_i - pred_j). Scale-free in the target, so only the ranking is learned."""
    diff = pred[:, :, None] - pred[:, None, :]
    higher = target[:, :, None] > target[:, None, :]
    pairs = higher & valid[:, :, None] & valid[:, None, :]
    return (F.softplus(-diff) * pairs).sum() / pairs.sum().clamp_min(1)


class DamageMask(nn.Module):
    """Loss prediction (HPM; AdapTok): the scorer predicts, from the encoder features, how much the
    reconstruction of a token's patch suffers when that token is dropped, and the N tokens with the
    highest predicted damage are kept. The target is measured, not learned through the selection:
    each training step `damage_loss` decodes the same features under a random mask and its complement (no
    gradient), pools the per-pixel errors onto the latent grid (`damage_targets`: error when dropped
    minus error when kept) and trains the scorer to rank the tokens by it (`ranking_loss`). The
    scorer sees detached features, so its loss trains only the scorer. Cost: two extra decoder
    passes per step (`mqvq bench selectors`).

    The decoder is trained on the masks the selector draws, so it learns to restore what the selector
    drops, and the damage it measures then confirms the selector's choice, whichever it is (the
    mask-learning study found both equilibria). `random_share` > 0 draws that share of each training
    batch's masks at random instead (HPM trains on such a mix), so that what the decoder restores well
    does not follow from the selection alone."""

    def __init__(self, channels: int, ratio: float, scorer: str = "mlp", hidden: int = 256, random_share: float = 0.0):
        super().__init__()
        self.ratio, self.random_share = ratio, random_share
        self.scorer = make_scorer(scorer, channels, hidden)

    def forward(
        self, z: torch.Tensor, images: torch.Tensor | None = None, fg: torch.Tensor | None = None
    ) -> MaskOutput:
        pred = self.scorer.logits(z.detach())
        choose = pred.detach()
        if self.training and self.random_share > 0:  # these images get a blind mask
            blind = torch.rand(pred.shape[0], 1, device=pred.device) < self.random_share
            choose = torch.where(blind, torch.rand_like(choose), choose)
        out = _kept(z, choose, self.ratio)
        out.scores = pred  # with its gradient: the damage loss trains the scorer through it
        return out

    def damage_loss(
        self,
        images: torch.Tensor,
        scores: torch.Tensor,
        kept: int,
        grid: tuple[int, int],
        decode_kept,
    ) -> torch.Tensor:
        """The scorer's ranking loss against `damage_targets` under two fresh random probe masks of the
        training mask's size `kept`. `decode_kept(keep)` decodes (B, 3, H, W) keeping the tokens `keep`
        (B, L) marks, without gradient, from codes read before this step's codebook update: a target
        measured with codes the update already moved would credit a token with the update's change."""
        b, length = scores.shape
        with torch.no_grad():
            keep_a, keep_b = probe_masks(b, length, kept, images.device)
            damage, valid = damage_targets(decode_kept, images, keep_a, keep_b, grid)
        return ranking_loss(scores.float(), damage, valid)


def topn_threshold(values: torch.Tensor, n: int) -> torch.Tensor:
    """(B, L) -> (B, 1), detached: the midpoint between the n-th and (n+1)-th largest values, the
    boundary the hard top-n choice draws (with every token kept, 1 below the smallest)."""
    v = values.detach()
    if n >= v.shape[1]:
        return v.min(1, keepdim=True).values - 1.0
    top = v.topk(n + 1, dim=1).values
    return (top[:, n - 1 : n] + top[:, n : n + 1]) / 2


class StraightThroughMask(nn.Module):
    """Gumbel top-N with a straight-through keep mask (DynamicViT; DQ-VAE's router). While training,
    the kept set is the hard top-N of s + g (g ~ Gumbel(0, 1)) and `relaxed` = sigmoid((s + g - t) / tau)
    is the surrogate whose gradient the decoder input carries, centred on t, the detached midpoint
    between the N-th and (N+1)-th values of s + g: centred at 0 instead, its gradient would change when
    every logit shifts by a constant while the choice does not, and vanish for every token far from 0
    as tau anneals, however close to the boundary. `MQVAE` adds
    (relaxed - sg(relaxed)) * (VQ(z) - e_mask) to the grid, which is zero forward, so the scorer's
    gradient is the value of keeping each token. No gain on the kept features; at N fixed no ratio
    loss is needed. In eval, the top-N of s (no noise). `tau` is set by the training loop
    (annealed from tau_start to tau_end)."""

    def __init__(self, channels: int, ratio: float, scorer: str = "mlp", hidden: int = 256, tau: float = 1.0):
        super().__init__()
        self.ratio = ratio
        self.scorer = make_scorer(scorer, channels, hidden)
        self.register_buffer("tau", torch.tensor(float(tau)))

    def forward(
        self, z: torch.Tensor, images: torch.Tensor | None = None, fg: torch.Tensor | None = None
    ) -> MaskOutput:
        s = self.scorer.logits(z)
        if not self.training:
            return _kept(z, s, self.ratio)
        u = torch.rand_like(s).clamp(1e-9, 1.0 - 1e-9)
        noisy = s - torch.log(-torch.log(u))
        threshold = topn_threshold(noisy, num_kept(noisy.shape[1], self.ratio))
        out = _kept(z, noisy, self.ratio, torch.sigmoid((noisy - threshold) / self.tau))
        out.scores = s.detach()
        return out


def anneal_tau(start: float, end: float, step: int, steps: int) -> float:
    """Geometric from `start` at step 0 to `end` at the last step."""
    t = min(max(step / max(steps - 1, 1), 0.0), 1.0)
    return start * math.exp(t * math.log(end / start))


class EntropyMask(nn.Module):
    """DQ-VAE's fixed rule: keep the N tokens whose patches have the highest grey-level histogram
    entropy (32 bins). No parameters, no learning: a bound for what raw detail can do."""

    def __init__(self, ratio: float):
        super().__init__()
        self.ratio = ratio

    def forward(
        self, z: torch.Tensor, images: torch.Tensor | None = None, fg: torch.Tensor | None = None
    ) -> MaskOutput:
        if images is None:
            raise ValueError("the entropy selector needs the images")
        return _kept(z, patch_entropy(images, z.shape[-2:]).to(z.device), self.ratio)


class OracleForegroundMask(nn.Module):
    """Keep the N tokens with the largest ground-truth foreground share; ties broken at random (the
    noise is below the smallest step between two shares, so it only orders equal ones). The upper
    bound of any selector on foreground share; needs data with foreground masks."""

    def __init__(self, ratio: float):
        super().__init__()
        self.ratio = ratio

    def forward(
        self, z: torch.Tensor, images: torch.Tensor | None = None, fg: torch.Tensor | None = None
    ) -> MaskOutput:
        if fg is None:
            raise UserError(
                "the oracle-foreground selector needs foreground masks and this data has none: "
                f"use procedural or fashion-mnist data, or another selector ({', '.join(s for s in SELECTORS if s not in NEEDS_FOREGROUND)})."
            )
        share = foreground_share(fg.to(z.device), z.shape[-2:])
        patch = (fg.shape[-2] // z.shape[-2]) * (fg.shape[-1] // z.shape[-1])
        return _kept(z, share + torch.rand_like(share) * (0.5 / patch), self.ratio)


def centre_scores(grid: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """(L,): minus the squared distance of each grid position to the grid's centre, plus a tie-break
    drawn once (a fixed generator, so every run, seed and image gets the same order): squared
    distances on a grid differ by at least 0.25, the noise is below 0.1."""
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2, indexing="ij")
    noise = torch.rand(h * w, generator=torch.Generator().manual_seed(seed)) * 0.1
    return -(ys * ys + xs * xs).flatten() + noise


class CentreMask(nn.Module):
    """The position prior as a selector: keep the N tokens nearest the grid's centre, the same set in
    every image, ties broken once at random. No parameters and nothing learned: the bar any learned
    selector must beat on data where the object sits in the middle, and 0.5 in shuffled AUROC."""

    def __init__(self, ratio: float):
        super().__init__()
        self.ratio = ratio

    def forward(
        self, z: torch.Tensor, images: torch.Tensor | None = None, fg: torch.Tensor | None = None
    ) -> MaskOutput:
        b, _, h, w = z.shape
        scores = centre_scores((h, w)).to(z.device, torch.float32).expand(b, -1)
        return _kept(z, scores, self.ratio)
