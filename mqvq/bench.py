"""Benchmarks (not timed tests): warm-up, device synchronisation, medians of repeats, peak memory,
device and software versions. Random weights: speed does not depend on them."""
from __future__ import annotations

import functools
import platform
import statistics
import time

import torch

from mqvq.config import STACKFORMER_PRESETS, SamplingConfig, StackformerConfig, num_kept
from mqvq.errors import UserError
from mqvq.models.sampling import generate, generate_compiled
from mqvq.models.stackformer import Stackformer, TokenShape


def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
           "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if device.type == "cuda":
        env |= {"gpu": torch.cuda.get_device_name(device), "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version()}
    else:
        env |= {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    return env


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_sample(preset: str = "small", grid: int = 16, batch_size: int = 64, ratios=(0.0, 0.25, 0.5),
                 cache_modes=(True, False), device: str | None = None, precision: str = "auto", repeats: int = 3,
                 codebook_size: int = 1024, compile: bool = False) -> dict:
    """Images/s of Algorithm 1 for Stackformer (ratio > 0) and the raster baseline (ratio 0)."""
    if preset not in STACKFORMER_PRESETS:
        raise UserError(f"unknown preset {preset!r}: allowed presets are {', '.join(STACKFORMER_PRESETS)}.")
    if batch_size < 1 or repeats < 1 or grid < 1:
        raise UserError("batch size, repeats and grid must be at least 1.")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if (precision == "bf16" or (precision == "auto" and dev.type == "cuda")) else None
    code_layers, pos_layers, width, heads = STACKFORMER_PRESETS[preset]
    params = SamplingConfig(top_k=100, top_p=0.95, top_k_pos=10, top_p_pos=0.95, batch_size=batch_size)
    rows = []
    for ratio in ratios:
        length = grid * grid
        n = num_kept(length, ratio)
        kind = "raster" if ratio == 0 else "stackformer"
        cfg = StackformerConfig(kind=kind, preset=preset, code_layers=code_layers, position_layers=pos_layers,
                                width=width, heads=heads, dropout=0.0)
        torch.manual_seed(0)
        model = Stackformer(cfg, TokenShape(codebook_size, (grid, grid), n)).to(dev).eval()
        if dtype is not None:
            model = model.to(dtype)
        for cache in cache_modes:
            if compile and cache:
                run = functools.partial(generate_compiled, model, batch_size, params, device=dev)
            else:
                run = functools.partial(generate, model, batch_size, params, use_cache=cache, device=dev)
            run()  # warm-up (and allocation)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            times = []
            for _ in range(repeats):
                _sync(dev)
                t0 = time.perf_counter()
                run()
                _sync(dev)
                times.append(time.perf_counter() - t0)
            sec = statistics.median(times)
            rows.append({"model": kind, "mask_ratio": ratio, "tokens": n, "cache": cache, "compiled": compile and cache,
                         "batch_size": batch_size,
                         "seconds_per_batch": sec, "images_per_s": batch_size / sec, "ms_per_step": 1000 * sec / n,
                         "peak_memory_gb": torch.cuda.max_memory_allocated(dev) / 1e9 if dev.type == "cuda" else None,
                         "params_m": model.num_params() / 1e6})
    result = {"benchmark": "sample", "preset": preset, "grid": f"{grid}x{grid}", "precision": str(dtype or torch.float32),
              "codebook_size": codebook_size, "rows": rows, "environment": environment(dev)}
    by = {(r["mask_ratio"], r["cache"]): r["images_per_s"] for r in rows}
    cached = True in cache_modes
    if (0.5, cached) in by and (0.0, cached) in by:
        result["sample_speedup_50_vs_0"] = by[(0.5, cached)] / by[(0.0, cached)]
    if (0.25, cached) in by:
        result["sample_images_per_s"] = by[(0.25, cached)]  # headline: 25 % mask, 192 tokens on a 16x16 grid
    return result
