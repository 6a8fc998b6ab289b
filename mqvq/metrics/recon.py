"""Stage-1 metrics from one pass over a test split: rFID features, codebook usage (Table 6's
definition), perplexity, PSNR, LPIPS, and mask quality on datasets with foreground masks."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from mqvq.data import eval_batches
from mqvq.metrics.features import to_uint8
from mqvq.metrics.frechet import FeatureStats, RunningStats
from mqvq.models.quantizer import perplexity
from mqvq.train.common import autocast, progress_bar


LPIPS_MIN_SIDE = 64


def lpips_inputs(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LPIPS-AlexNet needs at least ~32 px (stride-4 stem, three pools); tiny images are upsampled to 64."""
    if min(x.shape[-2:]) >= LPIPS_MIN_SIDE:
        return x, y
    up = lambda t: F.interpolate(t, size=(LPIPS_MIN_SIDE, LPIPS_MIN_SIDE), mode="bilinear", align_corners=False)  # noqa: E731
    return up(x), up(y)


def codebook_usage(counts: torch.Tensor) -> float:
    """Percentage of the K codes used at least once (Table 6: over the entire test set)."""
    return 100.0 * (counts > 0).float().mean().item()


def token_foreground(fg: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) pixel mask -> (B, L) bool: a token is foreground when most of its f x f patch is."""
    frac = F.adaptive_avg_pool2d(fg[:, None].float(), grid)
    return (frac >= 0.5).flatten(1)


def mask_quality(keep: torch.Tensor, fg_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Counts for: share of kept tokens on the foreground (precision), share of foreground tokens kept (recall)."""
    return {"kept_fg": (keep & fg_tokens).sum(), "kept": keep.sum(), "fg": fg_tokens.sum(), "tokens": torch.tensor(keep.numel())}


@dataclass
class ReconResult:
    metrics: dict[str, float]
    counts: torch.Tensor                      # (K,) code frequencies over the split
    recon_stats: FeatureStats | None = None   # features of the reconstructions (rFID)
    examples: dict = field(default_factory=dict)  # first batch: images, recon, keep, scores, grid


@torch.no_grad()
def reconstruction_metrics(model, dataset, device: torch.device, *, backend=None, lpips=None, batch_size: int = 64,
                           dtype=None, limit: int = 0, workers: int = 0, progress: bool = False) -> ReconResult:
    model.eval()
    counts = torch.zeros(model.config.quantizer.codebook_size, device=device)
    stats = RunningStats(backend.dim) if backend is not None else None
    sums = {"psnr": 0.0, "lpips": 0.0, "l1": 0.0}
    mq = {"kept_fg": 0, "kept": 0, "fg": 0, "tokens": 0}
    has_mask = model.config.mask.type != "none"
    n, examples = 0, {}
    total = len(dataset) if not limit else min(limit, len(dataset))
    with progress_bar(progress) as bar:
        task = bar.add_task("reconstructing", total=total, info="")
        for batch in eval_batches(dataset, batch_size, limit, workers=workers):
            x = batch["image"].to(device)
            with autocast(device, dtype):
                out = model(x)
            recon = out.recon.float().clamp(-1, 1)
            enc = out.encoded
            counts.index_add_(0, enc.codes.flatten(), torch.ones(enc.codes.numel(), device=device))
            real8, fake8 = to_uint8(x), to_uint8(recon)
            mse = (real8.float() - fake8.float()).pow(2).mean(dim=(1, 2, 3))
            sums["psnr"] += (10 * torch.log10(255.0 ** 2 / mse.clamp_min(1e-10))).sum().item()
            sums["l1"] += (x - recon).abs().mean(dim=(1, 2, 3)).sum().item()
            if lpips is not None:
                sums["lpips"] += lpips(*lpips_inputs(x, recon)).sum().item()
            if stats is not None:
                stats.update(backend(fake8)[0])
            if has_mask and "fg" in batch:
                q = mask_quality(enc.keep, token_foreground(batch["fg"].to(device), enc.grid))
                for k in mq:
                    mq[k] += int(q[k])
            if not examples:
                examples = {"images": x[:8].cpu(), "recon": recon[:8].cpu(), "keep": enc.keep[:8].cpu(),
                            "scores": None if enc.scores is None else enc.scores[:8].float().cpu(), "grid": enc.grid}
            n += x.shape[0]
            bar.advance(task, x.shape[0])
    metrics = {"usage": codebook_usage(counts), "perplexity": perplexity(counts).item(), "psnr": sums["psnr"] / n,
               "l1": sums["l1"] / n, "num_images": float(n)}
    if lpips is not None:
        metrics["lpips"] = sums["lpips"] / n
    if mq["kept"]:
        metrics["mask_fg_precision"] = mq["kept_fg"] / mq["kept"]          # kept tokens that are foreground
        metrics["mask_fg_recall"] = mq["kept_fg"] / max(mq["fg"], 1)       # foreground tokens that were kept
        metrics["fg_token_fraction"] = mq["fg"] / mq["tokens"]             # what a random mask's precision would be
    return ReconResult(metrics, counts.cpu(), stats.finalize() if stats is not None and stats.n > 1 else None, examples)
