"""One pass of a trained stage-1 model over a test split, collecting every stage-1 metric at once:
rFID features, codebook usage (Table 6's definition), perplexity, PSNR, LPIPS, and mask quality on
datasets with foreground masks, with the damage the model's own decoder measures when a foreground
or a background token is dropped (`MQVAE.probe_damage`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mqvq.data import eval_batches
from mqvq.images import to_uint8
from mqvq.metrics.codebook import codebook_usage, effective_usage
from mqvq.metrics.frechet import FeatureStats, RunningStats
from mqvq.metrics.mask import MaskTally, token_foreground
from mqvq.metrics.pixels import lpips_distance, psnr
from mqvq.models.quantizer import perplexity
from mqvq.runtime import autocast, progress_bar


@dataclass
class ReconResult:
    metrics: dict[str, float]
    counts: torch.Tensor  # (K,) code frequencies over the split
    recon_stats: FeatureStats | None = None  # features of the reconstructions (rFID)
    examples: dict = field(default_factory=dict)  # first batch: images, recon, keep, scores, grid, fg
    keep_frequency: torch.Tensor | None = None  # (h, w) share of images keeping each position (masked models with fg)
    fg_frequency: torch.Tensor | None = None  # (h, w) share of images with a foreground token at each position


@torch.no_grad()
def reconstruction_metrics(
    model,
    dataset,
    device: torch.device,
    *,
    backend=None,
    lpips=None,
    batch_size: int = 64,
    dtype=None,
    limit: int = 0,
    workers: int = 0,
    progress: bool = False,
) -> ReconResult:
    model.eval()
    counts = torch.zeros(model.config.quantizer.codebook_size, device=device)
    stats = RunningStats(backend.dim) if backend is not None else None
    sums = {"psnr": 0.0, "lpips": 0.0, "l1": 0.0}
    tally = None
    has_mask = model.config.mask.type != "none"
    n, examples = 0, {}
    damage = torch.zeros(
        4, dtype=torch.float64, device=device
    )  # summed damage and count on foreground, background tokens
    probes = torch.Generator(device=device).manual_seed(0)  # the same probe masks for every model measured
    total = len(dataset) if not limit else min(limit, len(dataset))
    with progress_bar(progress) as bar:
        task = bar.add_task("reconstructing", total=total, info="")
        for batch in eval_batches(dataset, batch_size, limit, workers=workers):
            x = batch["image"].to(device)
            with autocast(device, dtype):
                out = model(x, batch["fg"].to(device) if "fg" in batch else None)
            recon = out.recon.float().clamp(-1, 1)
            enc = out.encoded
            counts.index_add_(0, enc.codes.flatten(), torch.ones(enc.codes.numel(), device=device))
            fake8 = to_uint8(recon)
            sums["psnr"] += psnr(x, recon).sum().item()
            sums["l1"] += (x - recon).abs().mean(dim=(1, 2, 3)).sum().item()
            if lpips is not None:
                sums["lpips"] += lpips_distance(lpips, x, recon).sum().item()
            if stats is not None:
                stats.update(backend(fake8)[0])
            if has_mask:
                tally = tally or MaskTally(enc.grid, device)
                tally.add(enc.keep, batch["fg"].to(device) if "fg" in batch else None, enc.scores, x)
                if "fg" in batch:
                    with autocast(device, dtype):
                        dmg, valid = model.probe_damage(x, probes)
                    t = token_foreground(batch["fg"].to(device), enc.grid)
                    dmg = dmg.double()
                    damage += torch.stack(
                        [(dmg * (valid & t)).sum(), (valid & t).sum(), (dmg * (valid & ~t)).sum(), (valid & ~t).sum()]
                    )
            if not examples:
                examples = {
                    "images": x[:8].cpu(),
                    "recon": recon[:8].cpu(),
                    "keep": enc.keep[:8].cpu(),
                    "scores": None if enc.scores is None else enc.scores[:8].float().cpu(),
                    "grid": enc.grid,
                    "fg": batch["fg"][:8].cpu() if "fg" in batch else None,
                }
            n += x.shape[0]
            bar.advance(task, x.shape[0])
    ppl = perplexity(counts).item()
    metrics = {
        "usage": codebook_usage(counts),
        "perplexity": ppl,
        "usage_effective": effective_usage(ppl, len(counts)),
        "psnr": sums["psnr"] / n,
        "l1": sums["l1"] / n,
        "num_images": float(n),
    }
    if lpips is not None:
        metrics["lpips"] = sums["lpips"] / n
    if tally is not None:
        metrics |= tally.result()
    if damage[1] > 0 and damage[3] > 0:
        metrics |= {"mask_damage_fg": (damage[0] / damage[1]).item(), "mask_damage_bg": (damage[2] / damage[3]).item()}
    return ReconResult(
        metrics,
        counts.cpu(),
        stats.finalize() if stats is not None and stats.n > 1 else None,
        examples,
        *(
            (tally.keep_frequency(), tally.fg_frequency() if tally.with_fg else None)
            if tally is not None
            else (None, None)
        ),
    )
