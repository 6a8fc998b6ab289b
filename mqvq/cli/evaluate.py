"""`mqvq eval RUN [--metrics ...] [--backend inception|vgg16] [--num-samples N]`"""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from mqvq.cli.common import (
    AsJson,
    Device,
    Home,
    Progress,
    SystemMetricsFlag,
    TrackingUri,
    cli_errors,
    console,
    open_tracker,
    print_json,
    table,
)


@cli_errors
def evaluate(
    run: Annotated[
        str,
        typer.Argument(
            help="a finished stage-1 or stage-2 MLflow run id, its logged model (m-..., models:/...), its model checkpoint, or STUDY:ROW (the row's stage-2 run, or its stage-1 run when it has none or every metric asked for is a stage-1 one)"
        ),
    ],
    metrics: Annotated[
        Optional[str],
        typer.Option(
            help="comma-separated: stage 1 rfid,usage,psnr,lpips,mask,figures; stage 2 fid,is,speed,attr,figures (default: all but is; attr only for text models on procedural data)"
        ),
    ] = None,
    backend: Annotated[
        Optional[str],
        typer.Option(
            help="Fréchet features: inception (FID; needs the weights file) or vgg16 (FD-VGG16, offline); default: the run's eval.backend"
        ),
    ] = None,
    num_samples: Annotated[Optional[int], typer.Option(help="generated samples for FID / IS (paper: 50000)")] = None,
    test_images: Annotated[
        Optional[int], typer.Option(help="test images for stage-1 metrics (0 = the entire test split)")
    ] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="images per batch")] = None,
    sampling: Annotated[
        str, typer.Option(help="stage 2: default (the run's settings) or best (from `mqvq search sampling`)")
    ] = "default",
    cfg_scale: Annotated[
        Optional[float],
        typer.Option(
            help="stage 2, models trained with condition dropout: the guidance scale of the second, guided fid / attr measurement (default: the run's eval.cfg_scale)"
        ),
    ] = None,
    profile: Annotated[str, typer.Option("--profile", "-p", help="the profile of a STUDY:ROW run")] = "smoke",
    device: Device = None,
    home: Home = None,
    tracking_uri: TrackingUri = None,
    progress: Progress = True,
    system_metrics: SystemMetricsFlag = True,
    as_json: AsJson = False,
) -> None:
    """Compute a run's metrics and figures and log them to that run."""
    from mqvq.stages.evaluate import STAGE_METRICS, evaluate_run, parse_metrics
    from mqvq.studies.plan import run_spec
    from mqvq.tracking import tags as T

    if backend is not None and backend not in ("inception", "vgg16"):
        raise typer.BadParameter("use inception or vgg16", param_hint="--backend")
    names = parse_metrics(metrics)
    tracker = open_tracker(tracking_uri, home)
    stage1_only = bool(names) and all(m in STAGE_METRICS["stage1"] and m != "figures" for m in names)
    run = run_spec(tracker, run, profile, "stage1" if stage1_only else None)
    result = evaluate_run(
        tracker,
        run,
        names,
        backend=backend,
        num_samples=num_samples,
        test_images=test_images,
        batch_size=batch_size,
        device=device,
        progress=progress,
        sampling_choice=sampling,
        cfg_scale=cfg_scale,
        system_metrics=None if system_metrics else False,
    )
    tags = result["tags"]
    if as_json:
        print_json(
            {
                "run_id": result["run_id"],
                "stage": result["stage"],
                "metrics": result["metrics"],
                "tags": {k: v for k, v in tags.items() if T.is_eval_tag(k)},
            }
        )
        return
    rows = [
        [k, f"{v:.4g}", " / ".join(str(tags[t]) for t in (T.eval_tag(k, "backend"), T.eval_tag(k, "num")) if t in tags)]
        for k, v in result["metrics"].items()
    ]
    console.print(table(["metric", "value", "backend / count"], rows, numeric=("value",)))
    console.print(f"logged to {result['stage']} run {result['run_id']}")
