"""`mqvq search sampling RUN_OR_ROW ...` and `mqvq search status RUN`"""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from mqvq.cli.common import Device, Home, Progress, TrackingUri, cli_errors, console, err_console, open_tracker

app = typer.Typer(no_args_is_help=True, help="Optuna searches over sampling settings, tracked in MLflow.")

Spec = Annotated[str, typer.Argument(help="a stage-2 run id, or STUDY:ROW for that row's stage-2 model")]
Storage = Annotated[
    Optional[str],
    typer.Option(help="Optuna storage: a journal file (default <home>/optuna/sampling.journal) or postgresql://..."),
]


def _range(name: str, value: Optional[str]):
    from mqvq.studies.search import parse_range

    return None if value is None else parse_range(name, value)


@app.command("sampling")
@cli_errors
def sampling(
    spec: Spec,
    trials: Annotated[
        int, typer.Option(help="trials in total (a rerun continues; a finished search starts nothing)")
    ] = 20,
    sampler: Annotated[str, typer.Option(help="tpe, gp, grid or random")] = "tpe",
    storage: Storage = None,
    num_samples: Annotated[
        Optional[int], typer.Option(help="samples per trial (default: the run's eval.num_samples, at most 10,000)")
    ] = None,
    metric: Annotated[
        Optional[str], typer.Option(help="fid (inception backend) or fd_vgg16 (default: the run's eval backend)")
    ] = None,
    workers: Annotated[int, typer.Option(help="parallel worker processes on this machine")] = 1,
    rungs: Annotated[
        Optional[str], typer.Option(help="sample counts at which poor trials may be pruned, e.g. 1000,5000")
    ] = None,
    pruner: Annotated[str, typer.Option(help="median or none")] = "median",
    top_k: Annotated[Optional[str], typer.Option(help="codes top-k range LOW:HIGH or one value (default 1:K)")] = None,
    top_p: Annotated[Optional[str], typer.Option(help="codes top-p range (default 0.7:1.0)")] = None,
    temperature: Annotated[Optional[str], typer.Option(help="codes temperature range (default 1.0, fixed)")] = None,
    top_k_pos: Annotated[Optional[str], typer.Option(help="positions top-k range (default 1:L)")] = None,
    top_p_pos: Annotated[Optional[str], typer.Option(help="positions top-p range (default 0.7:1.0)")] = None,
    temperature_pos: Annotated[
        Optional[str], typer.Option(help="positions temperature range (default 1.0, fixed)")
    ] = None,
    cfg_scale: Annotated[
        Optional[str],
        typer.Option(
            help="classifier-free guidance scale range (default 1.0:5.0 for models trained with condition dropout; others cannot be guided)"
        ),
    ] = None,
    grid_points: Annotated[int, typer.Option(help="grid sampler: points per searched parameter")] = 3,
    study_name: Annotated[
        Optional[str], typer.Option(help="Optuna study name (default: sampling/RUN/METRIC/N)")
    ] = None,
    seed: Annotated[int, typer.Option(help="sampler and sampling seed")] = 0,
    worker_index: Annotated[int, typer.Option(hidden=True, help="set by --workers for the processes it starts")] = 0,
    heartbeat: Annotated[
        Optional[float],
        typer.Option(
            help="seconds between a worker's heartbeats (default 30); a trial whose worker missed several (it died) is failed and its parameters retried"
        ),
    ] = None,
    profile: Annotated[str, typer.Option("--profile", "-p", help="profile of STUDY:ROW")] = "smoke",
    device: Device = None,
    home: Home = None,
    tracking_uri: TrackingUri = None,
    progress: Progress = True,
) -> None:
    """Search top-k / top-p / temperature for codes and positions, minimising FID (or FD-VGG16)."""
    from mqvq.errors import UserError
    from mqvq.metrics.registry import SAMPLE_METRICS, frechet
    from mqvq.models.checkpoint import read_checkpoint
    from mqvq.stages.generate import check_top_k
    from mqvq.stages.lookup import model_file
    from mqvq.studies.search import (
        HEARTBEAT_S,
        MAX_SAMPLES,
        SearchSpec,
        default_space,
        resolve_model_run,
        run_search,
        trial_size,
    )

    tracker = open_tracker(tracking_uri, home)
    run_id = resolve_model_run(tracker, spec, profile)
    if metric is not None and metric not in SAMPLE_METRICS:
        raise UserError(f"--metric {metric!r} is invalid: use {' or '.join(SAMPLE_METRICS)}.")
    if pruner not in ("median", "none"):
        raise UserError(f"--pruner {pruner!r} is invalid: use median or none.")
    ckpt = read_checkpoint(model_file(tracker, run_id))  # the search space needs only the model's shape
    shape, cfg = ckpt["shape"], ckpt["config"]
    grid_len = shape["grid"][0] * shape["grid"][1]
    guided = float(cfg["stage2"]["train"].get("cond_dropout", 0.0)) > 0
    space = default_space(shape["codebook_size"], grid_len, cfg["stage2"]["model"]["kind"] == "raster", guided)
    given = {
        "top_k": top_k,
        "top_p": top_p,
        "temperature": temperature,
        "top_k_pos": top_k_pos,
        "top_p_pos": top_p_pos,
        "temperature_pos": temperature_pos,
        "cfg_scale": cfg_scale,
    }
    for name, value in given.items():
        if value is not None:
            if name == "cfg_scale" and cfg["stage2"]["model"].get("conditioning", "none") == "none":
                raise UserError(
                    f"--cfg-scale does not apply: run {run_id} is unconditional, and guidance steers a class- "
                    f"or text-conditional model."
                )
            if name == "cfg_scale" and not guided:
                raise UserError(
                    f"--cfg-scale does not apply: run {run_id} was trained without condition dropout "
                    f"(stage2.train.cond_dropout = 0), so it cannot be guided."
                )
            if name not in space:
                raise UserError(f"--{name.replace('_', '-')} does not apply: the raster baseline samples no positions.")
            space[name] = _range(name, value)
            if name in ("top_k", "top_k_pos"):
                check_top_k(name, int(space[name].high), shape["codebook_size"], grid_len)
    ev = cfg.get("eval", {})
    metric = metric or frechet("fid", ev.get("backend", "inception"))
    try:
        asked_rungs = [int(r) for r in rungs.split(",")] if rungs else []
    except ValueError:
        raise UserError(f"--rungs {rungs!r} is invalid: use comma-separated sample counts, e.g. 1000,5000.") from None
    n, rung_list = trial_size(num_samples, int(ev.get("num_samples", MAX_SAMPLES)), asked_rungs)
    s = SearchSpec(run_id, metric, n, trials, sampler, space, rung_list, grid_points, seed, study_name or "")
    if sampler not in ("tpe", "gp", "grid", "random"):
        raise UserError(f"--sampler {sampler!r} is invalid: use tpe, gp, grid or random.")
    result = run_search(
        tracker,
        s,
        storage=storage,
        workers=workers,
        device=device,
        pruner=pruner,
        progress=progress,
        worker_index=worker_index,
        heartbeat=HEARTBEAT_S if heartbeat is None else heartbeat,
        log=lambda m: err_console.print(m, highlight=False),
    )
    _print_summary(result)


def _print_summary(r: dict) -> None:
    use = "  [green](in use: --sampling best)[/]" if r.get("in_use") else ""
    console.print(
        f"[bold]{r['study']}[/]: {r['trials']} trials ({', '.join(f'{v} {k}' for k, v in r['states'].items())}){use}"
    )
    if "best_value" in r:
        console.print(
            f"best: {r['best_value']:.4g} (trial {r['best_trial']}) with "
            + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r["best_params"].items())
        )
    if r.get("importance"):
        console.print("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in r["importance"].items()))
    console.print(f"dashboard: {r['dashboard']}", highlight=False)


@app.command("status")
@cli_errors
def status(
    spec: Spec,
    storage: Storage = None,
    metric: Annotated[Optional[str], typer.Option(help="fid or fd_vgg16")] = None,
    profile: Annotated[str, typer.Option("--profile", "-p", help="profile of STUDY:ROW")] = "smoke",
    home: Home = None,
    tracking_uri: TrackingUri = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Trials, best value and settings, parameter importance, and the optuna-dashboard command."""
    from mqvq.studies.search import search_status

    results = search_status(open_tracker(tracking_uri, home, read_only=True), spec, profile, storage, metric)
    if as_json:
        print(json.dumps({"searches": results}, indent=2, default=str))
        return
    for r in results:
        _print_summary(r)
