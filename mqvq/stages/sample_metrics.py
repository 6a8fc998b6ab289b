"""Stage-2 metrics: FID / FD-VGG16 and IS of generated samples, and sampling speed."""

from __future__ import annotations

import torch

from mqvq.config import SamplingConfig
from mqvq.metrics.frechet import FeatureStats, RunningStats, frechet_distance, inception_score
from mqvq.models.sampling import generate
from mqvq.stages.generate import Generator, sample_images
from mqvq.timing import timed


@torch.no_grad()
def sample_metrics(
    gen: Generator,
    num: int,
    params: SamplingConfig,
    backend,
    reference: FeatureStats | None,
    seed: int = 0,
    is_splits: int = 10,
    progress: bool = False,
    prompts: list[str] | None = None,
    keep: bool = False,
) -> dict:
    """Stream `num` samples (a text model's prompt i for sample i, cycling) through the feature
    backend: FD against `reference`, IS when there are logits. Without a backend nothing is measured
    here; `keep` returns every image (for the caption-following check) as `images`."""
    stats = RunningStats(backend.dim) if backend is not None else None
    logits, kept = [], []
    first = None
    for images, codes, positions, _ in sample_images(gen, num, params, prompts=prompts, seed=seed, progress=progress):
        x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        if backend is not None:
            feats, lg = backend(x)
            stats.update(feats)
            if lg is not None:
                logits.append(lg.cpu())
        if keep:
            kept.append(torch.from_numpy(images))
        if first is None:
            first = images
    out = {"num_samples": num, "first_images": first}
    if backend is not None:
        out["fd"] = frechet_distance(stats.finalize(), reference)
    if logits:
        out["is_mean"], out["is_std"] = inception_score(torch.cat(logits), is_splits)
    if keep:
        out["images"] = torch.cat(kept)
    return out


@torch.no_grad()
def sampling_speed(gen: Generator, params: SamplingConfig, batch_size: int, repeats: int = 3, dtype=None) -> dict:
    """Images/s of sampling + decoding at `batch_size`: warm-up, synchronised timing, median of repeats."""
    model = gen.stackformer
    device = next(model.parameters()).device
    prompts = ["a picture"] if gen.tokenizer is not None else None  # a text model's speed does not depend on the words
    cond, _ = gen.condition(0, batch_size, None, prompts, device)

    def once():
        s = generate(model, batch_size, params, cond, dtype=dtype, device=device)
        return gen.vae.decode(s.codes, s.positions, model.shape.grid)

    sec, _ = timed(once, device, warmup=1, repeats=repeats)
    return {
        "speed_images_per_s": batch_size / sec,
        "speed_ms_per_image": 1000 * sec / batch_size,
        "speed_batch_size": batch_size,
        "speed_tokens": model.shape.length,
    }
