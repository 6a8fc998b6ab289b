"""`mqvq search sampling RUN_OR_ROW ...` and `mqvq search status RUN`"""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from mqvq.config.schema import (
    PRUNERS,
    SAMPLERS,
    SEARCH_CFG_SCALE,
    SEARCH_HEARTBEAT_S,
    SEARCH_MAX_SAMPLES,
    SEARCH_TEMPERATURE,
    SEARCH_TOP_P,
)
from mqvq.errors import one_of
from mqvq.cli.common import (
    Device,
    HELP_MARKUP,
    Home,
    Progress,
    TrackingUri,
    cli_errors,
    console,
    err_console,
    open_tracker,
)

app = typer.Typer(
    rich_markup_mode=HELP_MARKUP,
    no_args_is_help=True,
    help="Optuna searches over sampling settings, tracked in MLflow.",
)


def _span(r: tuple[float, float]) -> str:
    """A default range as a user would type it: LOW:HIGH, or one value when fixed."""
    return f"{r[0]}, fixed" if r[0] == r[1] else f"{r[0]}:{r[1]}"


Spec = Annotated[str, typer.Argument(help="a stage-2 run id, or STUDY:ROW for that row's stage-2 model")]
Storage = Annotated[
    Optional[str],
    typer.Option(help="Optuna storage: a journal file (default <home>/optuna/sampling.journal) or postgresql://..."),
]


@app.command("sampling")
@cli_errors
def sampling(
    spec: Spec,
    trials: Annotated[
        int, typer.Option(help="trials in total (a rerun continues; a finished search starts nothing)")
    ] = 20,
    sampler: Annotated[str, typer.Option(help=one_of(SAMPLERS))] = SAMPLERS[0],
    storage: Storage = None,
    num_samples: Annotated[
        Optional[int],
        typer.Option(help=f"samples per trial (default: the run's eval.num_samples, at most {SEARCH_MAX_SAMPLES:,})"),
    ] = None,
    metric: Annotated[
        Optional[str], typer.Option(help="fid (inception backend) or fd_vgg16 (default: the run's eval backend)")
    ] = None,
    workers: Annotated[int, typer.Option(help="parallel worker processes on this machine")] = 1,
    rungs: Annotated[
        Optional[str], typer.Option(help="sample counts at which poor trials may be pruned, e.g. 1000,5000")
    ] = None,
    pruner: Annotated[str, typer.Option(help=one_of(PRUNERS))] = PRUNERS[0],
    top_k: Annotated[Optional[str], typer.Option(help="codes top-k range LOW:HIGH or one value (default 1:K)")] = None,
    top_p: Annotated[Optional[str], typer.Option(help=f"codes top-p range (default {_span(SEARCH_TOP_P)})")] = None,
    temperature: Annotated[
        Optional[str], typer.Option(help=f"codes temperature range (default {_span(SEARCH_TEMPERATURE)})")
    ] = None,
    top_k_pos: Annotated[Optional[str], typer.Option(help="positions top-k range (default 1:L)")] = None,
    top_p_pos: Annotated[
        Optional[str], typer.Option(help=f"positions top-p range (default {_span(SEARCH_TOP_P)})")
    ] = None,
    temperature_pos: Annotated[
        Optional[str], typer.Option(help=f"positions temperature range (default {_span(SEARCH_TEMPERATURE)})")
    ] = None,
    cfg_scale: Annotated[
        Optional[str],
        typer.Option(
            help=f"classifier-free guidance scale range (default {_span(SEARCH_CFG_SCALE)} for models trained with condition dropout; others cannot be guided)"
        ),
    ] = None,
    grid_points: Annotated[int, typer.Option(help="grid sampler: points per searched parameter")] = 3,
    study_name: Annotated[
        Optional[str], typer.Option(help="Optuna study name (default: sampling/RUN/METRIC/N)")
    ] = None,
    seed: Annotated[int, typer.Option(help="sampler and sampling seed")] = 0,
    worker_index: Annotated[int, typer.Option(hidden=True, help="set by --workers for the processes it starts")] = 0,
    heartbeat: Annotated[
        float,
        typer.Option(
            help="seconds between a worker's heartbeats; a trial whose worker missed several (it died) is failed and its parameters retried"
        ),
    ] = SEARCH_HEARTBEAT_S,
    profile: Annotated[str, typer.Option("--profile", "-p", help="profile of STUDY:ROW")] = "smoke",
    device: Device = None,
    home: Home = None,
    tracking_uri: TrackingUri = None,
    progress: Progress = True,
) -> None:
    """Search top-k / top-p / temperature for codes and positions, minimising FID (or FD-VGG16)."""
    from mqvq.studies.search import parse_rungs, plan_search, resolve_model_run, run_search

    tracker = open_tracker(tracking_uri, home)
    run_id = resolve_model_run(tracker, spec, profile)
    ranges = {
        "top_k": top_k,
        "top_p": top_p,
        "temperature": temperature,
        "top_k_pos": top_k_pos,
        "top_p_pos": top_p_pos,
        "temperature_pos": temperature_pos,
        "cfg_scale": cfg_scale,
    }
    s = plan_search(
        tracker,
        run_id,
        trials=trials,
        sampler=sampler,
        num_samples=num_samples,
        metric=metric,
        rungs=parse_rungs(rungs),
        ranges=ranges,
        grid_points=grid_points,
        seed=seed,
        study_name=study_name or "",
    )
    result = run_search(
        tracker,
        s,
        storage=storage,
        workers=workers,
        device=device,
        pruner=pruner,
        progress=progress,
        worker_index=worker_index,
        heartbeat=heartbeat,
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
