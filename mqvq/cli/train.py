"""`mqvq train stage1 ...`"""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from mqvq.cli.common import (
    HELP_MARKUP,
    Device,
    Home,
    Profile,
    Progress,
    Sets,
    SystemMetricsFlag,
    TrackingUri,
    cli_errors,
    console,
    open_tracker,
    system_metrics_flag,
)

app = typer.Typer(
    rich_markup_mode=HELP_MARKUP, no_args_is_help=True, help="Train stage 1 (MQ-VAE) or stage 2 (Stackformer)."
)

Seed = Annotated[int, typer.Option(help="run seed")]
Resume = Annotated[
    bool,
    typer.Option("--resume", help="continue the latest unfinished run of this config and seed from its checkpoint"),
]
RunId = Annotated[Optional[str], typer.Option("--run-id", help="resume this MLflow run id")]
MlflowExperiment = Annotated[
    Optional[str],
    typer.Option("--mlflow-experiment", help="MLflow experiment to log into (default: the experiment name)"),
]


@app.command("stage1")
@cli_errors
def stage1(
    experiment: Annotated[
        str, typer.Argument(help="experiment name from experiments/ (see `mqvq experiment list`) or a .toml path")
    ],
    profile: Profile = "smoke",
    set_: Sets = None,
    seed: Seed = 0,
    resume: Resume = False,
    run_id: RunId = None,
    device: Device = None,
    home: Home = None,
    tracking_uri: TrackingUri = None,
    mlflow_experiment: MlflowExperiment = None,
    progress: Progress = True,
    system_metrics: SystemMetricsFlag = True,
) -> None:
    """Train an MQ-VAE (or a VQGAN baseline) and log it as an MLflow run."""
    from mqvq.experiments import load_experiment
    from mqvq.stages.train_stage1 import train_stage1

    system_metrics_flag(system_metrics)
    cfg = load_experiment(experiment, profile, set_ or [], seed)
    tracker = open_tracker(tracking_uri, home)
    result = train_stage1(
        cfg,
        tracker,
        resume=resume,
        run_id=run_id,
        device=device,
        progress=progress,
        mlflow_experiment=mlflow_experiment,
    )
    _report(
        result,
        f"stage-1 run {result['run_id']} ({result['step']} steps) in {tracker.uri}",
        result.get("val_metrics", {}),
    )


@app.command("stage2")
@cli_errors
def stage2(
    experiment: Annotated[str, typer.Argument(help="experiment name from experiments/ or a .toml path")],
    stage1: Annotated[
        Optional[str],
        typer.Option(
            "--stage1",
            help="stage-1 run id, logged model (m-..., models:/...), model checkpoint or STUDY:ROW (that row's stage-1 run at --profile) (default: the finished stage-1 run of this experiment, profile and seed)",
        ),
    ] = None,
    profile: Profile = "smoke",
    set_: Sets = None,
    seed: Seed = 0,
    resume: Resume = False,
    run_id: RunId = None,
    device: Device = None,
    home: Home = None,
    tracking_uri: TrackingUri = None,
    mlflow_experiment: MlflowExperiment = None,
    progress: Progress = True,
    system_metrics: SystemMetricsFlag = True,
) -> None:
    """Train a Stackformer (or the raster baseline) on a frozen stage-1 model's tokens."""
    from mqvq.experiments import load_experiment
    from mqvq.stages.train_stage2 import train_stage2

    system_metrics_flag(system_metrics)
    cfg = load_experiment(experiment, profile, set_ or [], seed)
    tracker = open_tracker(tracking_uri, home)
    if stage1 is not None:
        from mqvq.studies.plan import run_spec

        stage1 = run_spec(tracker, stage1, profile, "stage1")
    result = train_stage2(
        cfg,
        tracker,
        stage1=stage1,
        resume=resume,
        run_id=run_id,
        device=device,
        progress=progress,
        mlflow_experiment=mlflow_experiment,
    )
    from mqvq.metrics.registry import TRAIN_LOSS

    m = result.get("train_metrics", {})
    _report(
        result,
        f"stage-2 run {result['run_id']} ({result['step']} steps) on stage-1 run {result['stage1']['run_id']}",
        {k: v for k, v in m.items() if k.startswith((TRAIN_LOSS, "val/"))},
    )


def _report(result: dict, what: str, metrics: dict) -> None:
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return
    resumed = f" (resumed from the checkpoint at step {result['resumed_from']})" if result.get("resumed_from") else ""
    console.print(f"[green]finished[/] {what}{resumed}")
    if metrics:
        console.print("  " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    console.print(f"  model: {result.get('model', result['checkpoint'])}")
