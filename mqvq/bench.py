"""Benchmarks (not timed tests): warm-up, device synchronisation, medians of repeats, peak memory,
device and software versions. Random weights: speed does not depend on them."""

from __future__ import annotations

import functools
import time
from typing import Callable

import torch

from mqvq.config import STACKFORMER_PRESETS, SamplingConfig, StackformerConfig, num_kept
from mqvq.config.schema import SELECTORS
from mqvq.errors import UserError
from mqvq.models.sampling import generate, generate_compiled
from mqvq.models.stackformer import Stackformer, TokenShape, sequence_loss
from mqvq.runtime import autocast, autocast_dtype, check_device, conv_layout, environment
from mqvq.timing import interleaved, medians, paired_ratio, sync
from mqvq.tracking.provenance import git_commit


def bench_sample(
    preset: str = "small",
    grid: int = 16,
    batch_size: int = 64,
    ratios=(0.0, 0.25, 0.5),
    cache_modes=(True, False),
    device: str | None = None,
    precision: str = "auto",
    repeats: int = 3,
    codebook_size: int = 1024,
    compile: bool = False,
) -> dict:
    """Images/s of Algorithm 1 for Stackformer (ratio > 0) and the raster baseline (ratio 0); the
    ratios of one cache mode are timed interleaved, and the 50 % vs 0 % speed-up is the median of
    paired ratios."""
    if preset not in STACKFORMER_PRESETS:
        raise UserError(f"unknown preset {preset!r}: allowed presets are {', '.join(STACKFORMER_PRESETS)}.")
    if batch_size < 1 or repeats < 1 or grid < 1:
        raise UserError("batch size, repeats and grid must be at least 1.")
    dev = _device(device)
    dtype = torch.bfloat16 if (precision == "bf16" or (precision == "auto" and dev.type == "cuda")) else None
    params = SamplingConfig(top_k=100, top_p=0.95, top_k_pos=10, top_p_pos=0.95, batch_size=batch_size)
    models = {}
    for ratio in ratios:
        kind = "raster" if ratio == 0 else "stackformer"
        cfg = StackformerConfig(kind=kind, preset=preset, **STACKFORMER_PRESETS[preset], dropout=0.0)
        torch.manual_seed(0)
        model = Stackformer(cfg, TokenShape(codebook_size, (grid, grid), num_kept(grid * grid, ratio))).to(dev).eval()
        models[ratio] = model.to(dtype) if dtype is not None else model
    rows, times = [], {}
    for cache in cache_modes:
        runs = {
            ratio: (
                functools.partial(generate_compiled, m, batch_size, params, device=dev)
                if compile and cache
                else functools.partial(generate, m, batch_size, params, use_cache=cache, device=dev)
            )
            for ratio, m in models.items()
        }
        times[cache], peak = interleaved(runs, dev, rounds=repeats)
        for ratio, model in models.items():
            wall, cpu = medians(times[cache][ratio])
            n = model.shape.length
            rows.append(
                {
                    "model": model.cfg.kind,
                    "mask_ratio": ratio,
                    "tokens": n,
                    "cache": cache,
                    "compiled": compile and cache,
                    "batch_size": batch_size,
                    "seconds_per_batch": wall,
                    "images_per_s": batch_size / wall,
                    "cpu_seconds_per_batch": cpu,
                    "ms_per_step": 1000 * wall / n,
                    "peak_memory_gb": peak,
                    "params_m": model.num_params() / 1e6,
                }
            )
    result = {
        "benchmark": "sample",
        "preset": preset,
        "grid": f"{grid}x{grid}",
        "precision": str(dtype or torch.float32),
        "codebook_size": codebook_size,
        "rounds": repeats,
        "timing": "interleaved rounds, medians (of paired ratios for ratios)",
        "rows": rows,
        "environment": environment(dev),
    }
    first = cache_modes[0]
    if 0.5 in models and 0.0 in models:
        result["sample_speedup_50_vs_0"] = paired_ratio(times[first][0.0]["wall"], times[first][0.5]["wall"])
        result["sample_speedup_50_vs_0_cpu"] = paired_ratio(times[first][0.0]["cpu"], times[first][0.5]["cpu"])
    if 0.25 in models:
        result["sample_images_per_s"] = batch_size / medians(times[first][0.25])[0]  # 25 % mask, cached
    return result


def _device(device: str | None) -> torch.device:
    return torch.device(check_device(device))


def bench_train_stage1(
    profile: str = "paper",
    batch_size: int | None = None,
    device: str | None = None,
    steps: int = 10,
    warmup: int = 3,
    compile: bool | None = None,
) -> dict:
    """Full stage-1 training step (G + D, LPIPS-VGG16, adaptive weight) img/s, MQ-VAE 25 % vs its VQGAN
    path, the two steps timed in interleaved rounds (`steps` each); the overhead is a median of paired ratios."""
    from mqvq.experiments import load_experiment
    from mqvq.models.losses import Stage1Loss
    from mqvq.models.lpips import LPIPS
    from mqvq.models.mqvae import MQVAE

    dev = _device(device)
    runs, rows = {}, []
    for name in ("mqvae-f16-adaptive-25", "vqgan-f16"):
        sets = [f"stage1.train.batch_size={batch_size}"] if batch_size else []
        cfg = load_experiment(name, profile, sets).stage1
        torch.manual_seed(0)
        model = MQVAE(cfg.model).to(dev).train()
        loss_fn = Stage1Loss(cfg.loss, LPIPS("vgg")).to(dev)  # random LPIPS weights: speed does not depend on them
        use_compile = cfg.train.compile if compile is None else compile
        runs[name] = stage1_step(model, loss_fn, cfg, dev, use_compile)
        rows.append(
            {
                "experiment": name,
                "batch_size": cfg.train.batch_size,
                "resolution": cfg.data.resolution,
                "precision": str(autocast_dtype(cfg.train.precision, dev) or torch.float32),
                "compiled": use_compile,
                "memory_format": str(conv_layout(dev)).removeprefix("torch."),
                "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            }
        )
    times, peak = interleaved(runs, dev, rounds=steps, warmup=warmup)
    for row in rows:
        wall, cpu = medians(times[row["experiment"]])
        row |= {
            "images_per_s": row["batch_size"] / wall,
            "ms_per_step": 1000 * wall,
            "cpu_ms_per_step": 1000 * cpu,
            "peak_memory_gb": peak,
        }
    mq, vq = times["mqvae-f16-adaptive-25"], times["vqgan-f16"]
    return {
        "benchmark": "train-stage1",
        "profile": profile,
        "rounds": steps,
        "timing": "interleaved rounds, medians",
        "rows": rows,
        "stage1_train_images_per_s": rows[0]["images_per_s"],
        "stage1_masking_overhead": paired_ratio(mq["wall"], vq["wall"]),
        "stage1_masking_overhead_cpu": paired_ratio(mq["cpu"], vq["cpu"]),
        "environment": environment(dev),
    }


def stage1_step(model, loss_fn, cfg, dev: torch.device, use_compile: bool, layout: torch.memory_format | None = None):
    """One G + D step on a fixed random batch, as the training loop runs it (in its memory layout
    unless `layout` says otherwise)."""
    layout = layout or conv_layout(dev)
    model.to(memory_format=layout)
    loss_fn.to(memory_format=layout)
    fused = dev.type == "cuda"
    opt_g = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.5, 0.9), fused=fused)
    opt_d = torch.optim.Adam(loss_fn.disc.parameters(), lr=1e-4, betas=(0.5, 0.9), fused=fused)
    dtype = autocast_dtype(cfg.train.precision, dev)
    net = torch.compile(model) if use_compile else model
    if use_compile:
        torch._functorch.config.donated_buffer = False
    b, r = cfg.train.batch_size, cfg.data.resolution
    x = (torch.rand(b, 3, r, r, device=dev) * 2 - 1).contiguous(memory_format=layout)
    fg = torch.rand(b, r, r, device=dev) > 0.6  # read by the oracle-foreground selector only
    gan_step = max(cfg.loss.disc_start, 0)

    def step():
        with autocast(dev, dtype):
            out = net(x, fg)
            g, _ = loss_fn.generator_loss(x, out.recon, out.vq_loss, model.last_layer(), gan_step)
            if out.selector_loss is not None:
                g = g + out.selector_loss
        opt_g.zero_grad(set_to_none=True)
        g.backward()
        opt_g.step()
        with autocast(dev, dtype):
            d_loss, _ = loss_fn.discriminator_loss(x, out.recon)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()

    return step


def bench_selectors(
    profile: str = "cpu",
    experiment: str = "mqvae-f16-adaptive-50",
    selectors=SELECTORS,
    device: str | None = None,
    steps: int = 10,
    warmup: int = 2,
) -> dict:
    """The stage-1 training step under each token selector, timed in interleaved rounds; each
    selector's cost is the median of its paired ratios against the paper's (`gain`) step. What the
    damage selector's second, random-mask decoder pass and the straight-through surrogate cost."""
    from mqvq.experiments import load_experiment
    from mqvq.models.losses import Stage1Loss
    from mqvq.models.mqvae import MQVAE

    dev = _device(device)
    runs, rows = {}, []
    for sel in dict.fromkeys(("gain", *selectors)):
        cfg = load_experiment(experiment, profile, [f"stage1.model.mask.selector={sel}"]).stage1
        torch.manual_seed(0)
        model = MQVAE(cfg.model).to(dev).train()
        lpips = None
        if cfg.loss.perceptual_weight > 0:
            from mqvq.models.lpips import LPIPS

            lpips = LPIPS("vgg")  # random weights: speed does not depend on them
        runs[sel] = stage1_step(model, Stage1Loss(cfg.loss, lpips).to(dev), cfg, dev, False)
        rows.append({"selector": sel, "batch_size": cfg.train.batch_size, "resolution": cfg.data.resolution})
    times, peak = interleaved(runs, dev, rounds=steps, warmup=warmup)
    for row in rows:
        wall, cpu = medians(times[row["selector"]])
        row |= {
            "ms_per_step": 1000 * wall,
            "cpu_ms_per_step": 1000 * cpu,
            "vs_gain": paired_ratio(times[row["selector"]]["wall"], times["gain"]["wall"]),
            "vs_gain_cpu": paired_ratio(times[row["selector"]]["cpu"], times["gain"]["cpu"]),
        }
    return {
        "benchmark": "selectors",
        "profile": profile,
        "experiment": experiment,
        "rounds": steps,
        "timing": "interleaved rounds, medians of paired ratios against gain",
        "threads": torch.get_num_threads(),
        "rows": rows,
        "peak_memory_gb": peak,
        "environment": environment(dev),
    }


def bench_train_stage2(
    preset: str = "small",
    grid: int = 16,
    mask_ratio: float = 0.25,
    batch_size: int = 16,
    device: str | None = None,
    steps: int = 10,
    warmup: int = 3,
    compile: bool = False,
    codebook_size: int = 1024,
) -> dict:
    """Full Stackformer training step (forward, CE_code + CE_position, backward, AdamW) tokens/s."""
    from mqvq.stages.train_stage2 import make_optimizer

    if preset not in STACKFORMER_PRESETS:
        raise UserError(f"unknown preset {preset!r}: allowed presets are {', '.join(STACKFORMER_PRESETS)}.")
    dev = _device(device)
    n, length = num_kept(grid * grid, mask_ratio), grid * grid
    torch.manual_seed(0)
    model = (
        Stackformer(
            StackformerConfig(preset=preset, **STACKFORMER_PRESETS[preset], dropout=0.1),
            TokenShape(codebook_size, (grid, grid), n),
        )
        .to(dev)
        .train()
    )
    opt = make_optimizer(model, 5e-4, 0.01, dev.type == "cuda")
    net = torch.compile(model) if compile else model
    codes = torch.randint(0, codebook_size, (batch_size, n), device=dev)
    positions = torch.rand(batch_size, length, device=dev).argsort(1)[:, :n].sort(1).values
    dtype = torch.bfloat16 if dev.type == "cuda" else None

    def step():
        with torch.autocast(dev.type, dtype=dtype) if dtype else _null():
            loss, _ = sequence_loss(*net(codes, positions), codes, positions)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    times, peak = interleaved({"step": step}, dev, rounds=steps, warmup=warmup)
    sec, cpu = medians(times["step"])
    return {
        "benchmark": "train-stage2",
        "preset": preset,
        "params_m": model.num_params() / 1e6,
        "tokens": n,
        "batch_size": batch_size,
        "ms_per_step": 1000 * sec,
        "cpu_ms_per_step": 1000 * cpu,
        "peak_memory_gb": peak,
        "compiled": compile,
        "precision": str(dtype or torch.float32),
        "stage2_train_tokens_per_s": batch_size * n / sec,
        "environment": environment(dev),
    }


def _null():
    import contextlib

    return contextlib.nullcontext()


def bench_fid(
    preset: str = "small",
    grid: int = 16,
    mask_ratio: float = 0.25,
    batch_size: int = 256,
    num: int = 2048,
    device: str | None = None,
    backend: str = "inception",
    profile: str = "paper",
    compile: bool = False,
) -> dict:
    """FID-50k wall clock, projected from measured end-to-end throughput: sample codes -> stage-1
    decoder -> feature backend (fp32) for `num` images. Random weights everywhere (a random-weight
    FID Inception is built when no weights file is given: speed does not depend on the values)."""
    from mqvq.experiments import load_experiment
    from mqvq.metrics.features import VGG16Features
    from mqvq.metrics.frechet import RunningStats
    from mqvq.models.mqvae import MQVAE

    dev = _device(device)
    cfg = load_experiment("mqvae-f16-adaptive-25", profile, [f"stage1.model.mask.ratio={mask_ratio}"]).stage1
    torch.manual_seed(0)
    vae = MQVAE(cfg.model).to(dev).eval()
    grid = cfg.data.resolution // cfg.model.downsample
    model = (
        Stackformer(
            StackformerConfig(preset=preset, **STACKFORMER_PRESETS[preset], dropout=0.0),
            TokenShape(cfg.model.quantizer.codebook_size, (grid, grid), num_kept(grid * grid, mask_ratio)),
        )
        .to(dev)
        .eval()
    )
    dtype = torch.bfloat16 if dev.type == "cuda" else None
    if dtype is not None:
        model = model.to(dtype)
    if backend == "inception":
        feats = _random_inception(dev)
    else:
        from mqvq.models.lpips import LPIPS

        feats = VGG16Features.__new__(VGG16Features)
        feats.lpips, feats.device, feats.resolution = LPIPS("vgg").to(dev), dev, min(224, max(32, cfg.data.resolution))
    params = SamplingConfig(top_k=100, top_p=0.95, top_k_pos=10, top_p_pos=0.95)
    stats = RunningStats(2048 if backend == "inception" else 512)
    gen = generate_compiled if compile else generate

    def batch(b):
        s = gen(model, b, params, device=dev)
        with torch.no_grad(), torch.autocast(dev.type, dtype=dtype) if dtype else _null():
            images = vae.decode(s.codes, s.positions, (grid, grid))
        x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        stats.update(feats(x)[0])

    batch(min(batch_size, num))  # warm-up
    sync(dev)
    t0, c0 = time.perf_counter(), time.process_time()
    done = 0
    while done < num:
        b = min(batch_size, num - done)
        batch(b)
        done += b
    sync(dev)
    sec = time.perf_counter() - t0
    return {
        "benchmark": "fid",
        "backend": backend,
        "measured_images": num,
        "seconds": sec,
        "cpu_seconds": time.process_time() - c0,
        "images_per_s": num / sec,
        "fid50k_seconds": 50_000 * sec / num,
        "fid50k_projected": num < 50_000,
        "batch_size": batch_size,
        "tokens": model.shape.length,
        "environment": environment(dev),
    }


def _random_inception(dev: torch.device):
    from unittest import mock

    from torch_fidelity import feature_extractor_inceptionv3 as fe

    from mqvq.metrics.features import InceptionFeatures

    with (
        mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}),
        mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None),
    ):
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"])
    obj = InceptionFeatures.__new__(InceptionFeatures)
    obj.model, obj.device, obj.resolution = net.to(dev).eval(), dev, 299
    return obj


HEADLINE = (
    "stage1_train_images_per_s",
    "stage1_masking_overhead",
    "stage2_train_tokens_per_s",
    "sample_images_per_s",
    "sample_speedup_50_vs_0",
    "fid50k_seconds",
)

# `bench all --quick`: the smallest sizes that still give every headline figure (a CPU check in minutes)
QUICK = {
    "profile": "smoke",
    "preset": "tiny",
    "steps": 3,
    "grid": 8,
    "sample_batch_size": 16,
    "repeats": 3,
    "fid_num": 64,
    "fid_batch_size": 32,
}


def bench_all(
    profile: str = "paper",
    preset: str = "small",
    *,
    compile: bool = False,
    fid_num: int = 2048,
    sample_batch_size: int = 64,
    device: str | None = None,
    quick: bool = False,
    on_section: Callable[[str, dict], None] | None = None,
) -> dict:
    """Every benchmark at the anchor configuration (or QUICK's sizes), the headline figures at the top
    level; `on_section(name, partial_result)` runs before and after each section so a caller can show
    progress and write what is finished (an interrupted run keeps its sections)."""
    device = check_device(device)  # before any section starts
    q = QUICK if quick else {}
    profile, preset = q.get("profile", profile), q.get("preset", preset)
    steps, grid = q.get("steps", 10), q.get("grid", 16)
    fid_num, sample_batch_size = q.get("fid_num", fid_num), q.get("sample_batch_size", sample_batch_size)
    sections = {
        "train_stage1": lambda: bench_train_stage1(
            profile, device=device, steps=steps, warmup=min(3, steps), compile=compile or None
        ),
        "train_stage2": lambda: bench_train_stage2(
            preset, grid=grid, device=device, steps=steps, warmup=min(3, steps), compile=compile
        ),
        "sample": lambda: bench_sample(
            preset, grid=grid, batch_size=sample_batch_size, device=device, compile=compile, repeats=q.get("repeats", 3)
        ),
        "fid": lambda: bench_fid(
            preset,
            num=fid_num,
            batch_size=q.get("fid_batch_size", min(256, fid_num)),
            device=device,
            profile=profile,
            compile=compile,
        ),
    }
    result = {
        "benchmark": "all",
        "profile": profile,
        "preset": preset,
        "quick": quick,
        "compiled": compile,
        "complete": False,
        "git_commit": git_commit(),
    }
    for name, run in sections.items():
        if on_section:
            on_section(name, result)
        t0 = time.perf_counter()
        result[name] = run() | {"section_seconds": round(time.perf_counter() - t0, 1)}
        result |= {k: result[name][k] for k in HEADLINE if k in result[name]}
    result["complete"] = True
    result["environment"] = result["sample"]["environment"]
    if on_section:
        on_section("", result)
    return result
