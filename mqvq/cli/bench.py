"""`mqvq bench sample`"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from mqvq.cli.common import cli_errors, console

app = typer.Typer(no_args_is_help=True, help="Benchmarks: warm-up, synchronised timing, medians, peak memory, versions.")


@app.command("sample")
@cli_errors
def sample(
    preset: Annotated[str, typer.Option(help="Stackformer size: tiny, mini, small (paper, 307M), base")] = "small",
    grid: Annotated[int, typer.Option(help="latent grid side (16 = f16 at 256x256)")] = 16,
    batch_size: Annotated[int, typer.Option(help="images per batch")] = 64,
    repeats: Annotated[int, typer.Option(help="timed repeats (median reported)")] = 3,
    cache: Annotated[str, typer.Option(help="on, off or both")] = "both",
    compile: Annotated[bool, typer.Option("--compile", help="compile the cached decode step (CUDA graphs)")] = False,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda")] = None,
    out: Annotated[Optional[Path], typer.Option(help="write the result JSON here (e.g. reports/bench/sample.json)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Sampling speed of Stackformer (25 %, 50 % mask) vs the raster baseline (0 %), cache on/off."""
    from mqvq.bench import bench_sample

    modes = {"on": (True,), "off": (False,), "both": (True, False)}
    if cache not in modes:
        raise typer.BadParameter("use on, off or both", param_hint="--cache")
    result = bench_sample(preset, grid, batch_size, cache_modes=modes[cache], device=device, repeats=repeats, compile=compile)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    if as_json:
        print(json.dumps(result, indent=2))
        return
    table = Table("model", "mask", "tokens", "cache", "img/s", "ms/step", "peak GB")
    for r in result["rows"]:
        table.add_row(r["model"], f"{r['mask_ratio']:.0%}", str(r["tokens"]), "on" if r["cache"] else "off",
                      f"{r['images_per_s']:.2f}", f"{r['ms_per_step']:.2f}", f"{r['peak_memory_gb']:.2f}" if r["peak_memory_gb"] else "-")
    console.print(table)
    if "sample_speedup_50_vs_0" in result:
        console.print(f"50 % mask vs 0 % raster baseline: {result['sample_speedup_50_vs_0']:.2f}x  ({result['environment']['device']})")
