"""`mqvq bench sample|train-stage1|selectors|train-stage2|fid|all`"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from mqvq.cli.common import (
    AsJson,
    Device,
    HELP_MARKUP,
    Home,
    TrackingUri,
    cli_errors,
    console,
    err_console,
    open_tracker,
    table,
)
from mqvq.files import atomic_write

app = typer.Typer(
    rich_markup_mode=HELP_MARKUP,
    no_args_is_help=True,
    help="Benchmarks: warm-up, synchronised timing, medians, peak memory, versions; "
    "results to --out JSON and an MLflow run in the `bench` experiment.",
)

Out = Annotated[Optional[Path], typer.Option(help="write the result JSON here (e.g. reports/bench/h100.json)")]
Log = Annotated[bool, typer.Option("--log/--no-log", help="log the result as an MLflow run (experiment `bench`)")]
Preset = Annotated[str, typer.Option(help="Stackformer size: tiny, mini, small (paper, 307M), base")]
BenchProfile = Annotated[
    str, typer.Option("--profile", "-p", help="stage-1 sizes: paper (256², f = 16), mini or smoke")
]


def _write_json(out: Path, data: dict) -> None:
    atomic_write(out, lambda f: f.write((json.dumps(data, indent=2) + "\n").encode()), "; choose a writable --out")


def _emit(result: dict, out: Optional[Path], as_json: bool, log: bool, home, tracking_uri) -> None:
    from mqvq.bench import HEADLINE
    from mqvq.tracking import tags as T

    if out:
        _write_json(out, result)
    if log:
        tracker = open_tracker(tracking_uri, home)
        env = result.get("environment", {})
        run_id = tracker.start_run(
            "bench",
            f"bench-{result['benchmark']}",
            {T.KIND: T.Kind.BENCH.value, T.BENCH: result["benchmark"], **{T.ENV + k: v for k, v in env.items()}},
        )
        metrics = {k: v for k, v in _flat(result).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        tracker.log_metrics(run_id, metrics, step=0)
        tracker.log_dict(run_id, result, "bench.json")
        tracker.end_run(run_id)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    rows = [
        [k, f"{v:.4g}" if isinstance(v, float) else str(v)]
        for k, v in _flat(result).items()
        if k in HEADLINE
        or k.endswith(("images_per_s", "tokens_per_s", "peak_memory_gb", "ms_per_step", "seconds", "vs_gain"))
    ]
    console.print(table(["figure", "value"], rows, numeric=("value",)))
    env = result.get("environment", {})
    console.print(f"{env.get('gpu', env.get('cpu', env.get('device')))}, torch {env.get('torch')}", highlight=False)


def _flat(result: dict) -> dict:
    from mqvq.bench import HEADLINE

    out = {k: v for k, v in result.items() if not isinstance(v, (list, dict))}
    for i, row in enumerate(result.get("rows", [])):
        tag = (
            row.get("experiment")
            or row.get("selector")
            or f"{row.get('model')}_{row.get('mask_ratio')}_{'cache' if row.get('cache') else 'nocache'}"
        )
        out |= {f"{tag}.{k}": v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for name, sub in result.items():
        if isinstance(sub, dict) and name != "environment":
            out |= {k: v for k, v in _flat(sub).items() if k in HEADLINE}
    return out


@app.command("sample")
@cli_errors
def sample(
    preset: Preset = "small",
    grid: Annotated[int, typer.Option(help="latent grid side (16 = f16 at 256x256)")] = 16,
    batch_size: Annotated[int, typer.Option(help="images per batch")] = 64,
    repeats: Annotated[int, typer.Option(help="timed repeats (median reported)")] = 3,
    cache: Annotated[str, typer.Option(help="on, off or both")] = "both",
    compile: Annotated[bool, typer.Option("--compile", help="compile the cached decode step (CUDA graphs)")] = False,
    device: Device = None,
    out: Out = None,
    as_json: AsJson = False,
    log: Log = False,
    home: Home = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Sampling speed of Stackformer (25 %, 50 % mask) vs the raster baseline (0 %), cache on/off."""
    from mqvq.bench import bench_sample

    modes = {"on": (True,), "off": (False,), "both": (True, False)}
    if cache not in modes:
        raise typer.BadParameter("use on, off or both", param_hint="--cache")
    result = bench_sample(
        preset, grid, batch_size, cache_modes=modes[cache], device=device, repeats=repeats, compile=compile
    )
    if not as_json and not out:
        rows = [
            [
                r["model"],
                f"{r['mask_ratio']:.0%}",
                str(r["tokens"]),
                "on" if r["cache"] else "off",
                f"{r['images_per_s']:.2f}",
                f"{r['ms_per_step']:.2f}",
                f"{r['peak_memory_gb']:.2f}" if r["peak_memory_gb"] else "-",
            ]
            for r in result["rows"]
        ]
        console.print(
            table(
                ["model", "mask", "tokens", "cache", "img/s", "ms/step", "peak GB"],
                rows,
                numeric=("tokens", "img/s", "ms/step", "peak GB"),
            )
        )
    _emit(result, out, as_json, log, home, tracking_uri)


@app.command("train-stage1")
@cli_errors
def train_stage1(
    profile: BenchProfile = "paper",
    batch_size: Annotated[Optional[int], typer.Option(help="images per step (default: the profile's)")] = None,
    steps: Annotated[int, typer.Option(help="timed steps")] = 10,
    compile: Annotated[
        Optional[bool], typer.Option("--compile/--no-compile", help="default: the profile's stage1.train.compile")
    ] = None,
    device: Device = None,
    out: Out = None,
    as_json: AsJson = False,
    log: Log = False,
    home: Home = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Stage-1 training step (G + D, LPIPS-VGG16): MQ-VAE 25 % img/s and the masking overhead vs VQGAN."""
    from mqvq.bench import bench_train_stage1

    _emit(
        bench_train_stage1(profile, batch_size, device, steps, compile=compile), out, as_json, log, home, tracking_uri
    )


@app.command("selectors")
@cli_errors
def selectors(
    profile: Annotated[
        str,
        typer.Option("--profile", "-p", help="stage-1 sizes (default: the cpu profile the mask-learning study runs)"),
    ] = "cpu",
    experiment: Annotated[
        str, typer.Option(help="the masked experiment whose step is timed")
    ] = "mqvae-f16-adaptive-50",
    steps: Annotated[int, typer.Option(min=1, help="timed rounds")] = 10,
    device: Device = None,
    out: Out = None,
    as_json: AsJson = False,
    log: Log = False,
    home: Home = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Stage-1 training step under each token selector, interleaved, as a ratio to the paper's (gain) step."""
    from mqvq.bench import bench_selectors

    _emit(bench_selectors(profile, experiment, device=device, steps=steps), out, as_json, log, home, tracking_uri)


@app.command("train-stage2")
@cli_errors
def train_stage2(
    preset: Preset = "small",
    batch_size: Annotated[int, typer.Option(help="sequences per step")] = 16,
    steps: Annotated[int, typer.Option(help="timed steps")] = 10,
    compile: Annotated[bool, typer.Option("--compile")] = False,
    device: Device = None,
    out: Out = None,
    as_json: AsJson = False,
    log: Log = False,
    home: Home = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Stackformer training tokens/s (192 tokens: 25 % of a 16x16 grid)."""
    from mqvq.bench import bench_train_stage2

    _emit(
        bench_train_stage2(preset, batch_size=batch_size, device=device, steps=steps, compile=compile),
        out,
        as_json,
        log,
        home,
        tracking_uri,
    )


@app.command("fid")
@cli_errors
def fid(
    preset: Preset = "small",
    profile: BenchProfile = "paper",
    num: Annotated[int, typer.Option(help="images to time (projected to 50k)")] = 2048,
    batch_size: Annotated[int, typer.Option(help="images per batch")] = 256,
    backend: Annotated[str, typer.Option(help="inception or vgg16")] = "inception",
    compile: Annotated[bool, typer.Option("--compile")] = False,
    device: Device = None,
    out: Out = None,
    as_json: AsJson = False,
    log: Log = False,
    home: Home = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """FID-50k wall clock (sample + decode + features), projected from `--num` images."""
    from mqvq.bench import bench_fid

    if backend not in ("inception", "vgg16"):
        raise typer.BadParameter("use inception or vgg16", param_hint="--backend")
    _emit(
        bench_fid(
            preset, batch_size=batch_size, num=num, device=device, backend=backend, profile=profile, compile=compile
        ),
        out,
        as_json,
        log,
        home,
        tracking_uri,
    )


@app.command("all")
@cli_errors
def all_(
    profile: BenchProfile = "paper",
    preset: Preset = "small",
    compile: Annotated[bool, typer.Option("--compile")] = False,
    fid_num: Annotated[int, typer.Option(help="images timed for the FID-50k projection")] = 2048,
    sample_batch_size: Annotated[int, typer.Option(help="sampling batch size")] = 64,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="the smallest sizes that give every headline figure "
            "(about 15 s on a 2-core CPU; overrides the sizes above)",
        ),
    ] = False,
    device: Device = None,
    out: Out = None,
    as_json: AsJson = False,
    log: Log = False,
    home: Home = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Every benchmark at the anchor configuration; the headline figures at the top level."""
    import time

    from mqvq.bench import bench_all

    start = time.perf_counter()

    def on_section(name: str, partial: dict) -> None:
        done = [k for k in ("train_stage1", "train_stage2", "sample", "fid") if k in partial]
        if done and out:  # an interrupted benchmark keeps every section it finished
            _write_json(out, partial)
        if name:
            err_console.print(
                f"[{len(done) + 1}/4] {name} ({time.perf_counter() - start:.0f} s so far)", highlight=False
            )

    result = bench_all(
        profile,
        preset,
        compile=compile,
        fid_num=fid_num,
        sample_batch_size=sample_batch_size,
        device=device,
        quick=quick,
        on_section=on_section,
    )
    _emit(result, out, as_json, log, home, tracking_uri)
