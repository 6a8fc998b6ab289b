"""`mqvq study list|show|plan|run|status|submit|cancel`"""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape

from mqvq.cli.common import (
    HELP_MARKUP,
    AsJson,
    Device,
    Home,
    Profile,
    Progress,
    SystemMetricsFlag,
    TrackingUri,
    cli_errors,
    columns_that_fit,
    console,
    err_console,
    open_tracker,
    print_json,
    read_only,
    store_exists,
    system_metrics_flag,
    table,
)
from mqvq.studies.scheduler import SlurmOptions
from mqvq.tracking.records import LEASE_TIMEOUT_S

SLURM = SlurmOptions()  # the defaults of `study submit --slurm`

app = typer.Typer(
    rich_markup_mode=HELP_MARKUP,
    no_args_is_help=True,
    help="Declared ablation studies: plan, run (resumable, multi-worker), status.",
)

Name = Annotated[str, typer.Argument(help="study name from studies/ (see `mqvq study list`) or a .toml path")]
Seeds = Annotated[Optional[list[int]], typer.Option("--seeds", help="seeds to use instead of the study's (repeatable)")]
Only = Annotated[Optional[list[str]], typer.Option("--only", help="run only these rows (repeatable)")]
Backend = Annotated[
    Optional[str],
    typer.Option(help="Fréchet backend for the rows' metrics: inception or vgg16 (default: the profile's)"),
]


def _check_backend(backend):
    if backend is not None and backend not in ("inception", "vgg16"):
        raise typer.BadParameter("use inception or vgg16", param_hint="--backend")


@app.command("list")
@cli_errors
def list_(as_json: AsJson = False) -> None:
    """Every declared study."""
    from mqvq.studies.spec import list_studies

    if as_json:
        print_json({"studies": [{"name": k, "description": v} for k, v in list_studies().items()]})
        return
    console.print(table(["study", "description"], [[k, v] for k, v in list_studies().items()]))


@app.command("show")
@cli_errors
def show(name: Name, as_json: AsJson = False) -> None:
    """The study's rows: experiment, overrides, seeds and the paper values each mirrors."""
    from mqvq.studies.spec import load_study, row_paper

    s = load_study(name)
    rows = [
        {
            "row": r.name,
            "experiment": r.experiment,
            "label": r.label or r.name,
            "overrides": list(r.overrides),
            "seeds": list(r.seeds or s.seeds),
            "stage2": r.stage2,
            "paper": row_paper(s, r),
        }
        for r in s.rows
    ]
    if as_json:
        print_json(
            {"study": s.name, "description": s.description, "table": s.table, "metrics": list(s.metrics), "rows": rows}
        )
        return
    console.print(f"[bold]{s.name}[/]: {s.description} (paper {s.table}; metrics {', '.join(s.metrics)})")
    console.print(
        table(
            ["row", "experiment", "label", "seeds", "paper"],
            [
                [
                    r["row"],
                    r["experiment"] + (" " + " ".join(r["overrides"]) if r["overrides"] else ""),
                    r["label"],
                    ",".join(map(str, r["seeds"])),
                    ", ".join(f"{k} {v:g}" for k, v in r["paper"].items()),
                ]
                for r in rows
            ],
        )
    )


@app.command("plan")
@read_only
@cli_errors
def plan(
    name: Name,
    profile: Profile = "smoke",
    seeds: Seeds = None,
    only: Only = None,
    backend: Backend = None,
    device: Device = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            max=64,
            help="the --workers the study will run with (CPU: threads per worker; total time / N)",
        ),
    ] = 1,
    home: Home = None,
    tracking_uri: TrackingUri = None,
    as_json: AsJson = False,
) -> None:
    """Per row and stage: done, reusable, resumable or to run, with a time estimate from measured step times."""
    from mqvq.studies.plan import measured_costs, plan_study
    from mqvq.studies.spec import load_study

    _check_backend(backend)
    study = load_study(name)
    if device not in (None, "cpu"):  # a GPU named: refused now, in one sentence, if there is none (this imports torch)
        from mqvq.runtime import check_device

        check_device(device)
    tracker = open_tracker(tracking_uri, home, read_only=True)
    costs = measured_costs(tracker, profile, device, workers)
    plans = plan_study(tracker, study, profile, seeds, only, backend, device=device, workers=workers, costs=costs)
    rows = [
        {
            "row": p.row.name,
            "seed": p.seed,
            "status": p.status,
            "estimate_s": p.estimate_s,
            "stages": {k: {"state": v.state, "run_id": v.run_id, "detail": v.detail} for k, v in p.stages.items()},
        }
        for p in plans
    ]
    known = [p.estimate_s for p in plans if p.todo and p.estimate_s is not None]
    basis = {
        "device": costs.device,
        "measured_runs": costs.runs,
        "workers": workers,
        "total_s": sum(known) / workers if known else None,
    }
    if as_json:
        print_json({"study": study.name, "profile": profile, "estimate": basis, "rows": rows})
        return
    cells = []
    for p in plans:
        stages = [
            p.stages[s].state + (f" ({p.stages[s].run_id[:8]})" if p.stages[s].run_id else "")
            for s in ("stage1", "stage2", "eval")
        ]
        est = "-" if not p.todo else (f"{p.estimate_s:.0f} s" if p.estimate_s is not None else "unknown")
        cells.append([p.row.name, str(p.seed), *stages, est])
    console.print(table(["row", "seed", "stage 1", "stage 2", "eval", "estimate"], cells, numeric=("seed", "estimate")))
    todo = sum(p.todo for p in plans)
    total = (
        f", about {basis['total_s'] / 60:.0f} min" + (f" with {workers} workers" if workers > 1 else "")
        if known
        else ""
    )
    console.print(f"{todo} of {len(plans)} rows to run{total}")
    how = (
        f"from the step times of {costs.runs} finished {profile} runs"
        if costs.runs
        else f"no finished {profile} runs measured there yet: the estimates are rough defaults"
    )
    console.print(f"estimates assume {costs.device}, {how}", highlight=False)


@app.command("run")
@cli_errors
def run(
    name: Name,
    profile: Profile = "smoke",
    seeds: Seeds = None,
    only: Only = None,
    backend: Backend = None,
    device: Device = None,
    lease_timeout: Annotated[
        float, typer.Option(help="seconds without a heartbeat after which a row is taken over")
    ] = LEASE_TIMEOUT_S,
    workers: Annotated[
        int, typer.Option("--workers", min=1, max=64, help="worker processes sharing the rows (GPUs taken round-robin)")
    ] = 1,
    nproc: Annotated[
        int,
        typer.Option("--nproc", min=1, max=64, help="processes per training stage, under torchrun (DDP: one per GPU)"),
    ] = 1,
    home: Home = None,
    tracking_uri: TrackingUri = None,
    progress: Progress = True,
    system_metrics: SystemMetricsFlag = True,
) -> None:
    """Run every missing row: stage 1 -> tokens -> stage 2 -> eval. Safe to run several copies at once."""
    from mqvq.runtime import check_device

    system_metrics_flag(system_metrics)
    from mqvq.studies.runner import Outcome, exit_code, run_study
    from mqvq.studies.spec import load_study

    _check_backend(backend)
    study = load_study(name)
    check_device(device)  # before anything runs, even when every row is already finished
    tracker = open_tracker(tracking_uri, home)  # validates the store before any worker starts
    if nproc > 1 and workers > 1:
        from mqvq.errors import UserError

        raise UserError(
            "--nproc (processes per row, under torchrun) and --workers (rows side by side) cannot be combined: "
            "choose one."
        )
    options = {
        "profile": profile,
        "seeds": seeds,
        "only": only,
        "backend": backend,
        "lease_timeout": lease_timeout,
        "nproc": nproc,
    }
    if workers > 1:
        from mqvq.studies.workers import run_workers

        results, errors = run_workers(
            name, workers, tracking_uri=tracking_uri, home=str(tracker.home), device=device, **options
        )
        for e in errors:
            err_console.print(f"[red]{escape(str(e))}[/]", highlight=False)
    else:
        errors = []
        results = run_study(
            tracker,
            study,
            device=device,
            progress=progress,
            log=lambda m: err_console.print(m, highlight=False),
            **options,
        )
    counts = {str(s): sum(r.status == s for r in results) for s in Outcome}
    console.print(f"{study.name} ({profile}): " + ", ".join(f"{v} {k}" for k, v in counts.items() if v))
    if counts["finished"]:  # something new: refresh the study's summary run (the table and figures in the MLflow UI)
        from mqvq.reports.summary import publish_summary

        try:
            publish_summary(tracker, study, profile)  # the loaded study: one given as a path is not found by its name
            console.print(f"summary in MLflow: `mqvq ui {study.name} --profile {profile}`", highlight=False)
        except Exception as e:  # noqa: BLE001  (the rows are done and recorded; the summary is a view of them)
            err_console.print(f"[yellow]the study's summary run was not updated: {escape(str(e))}[/]", highlight=False)
    for r in results:
        if r.status == "failed":
            console.print(f"[red]failed[/] {r.row} (seed {r.seed}): {escape(r.detail)}")
    raise typer.Exit(max(exit_code(results), 1 if errors else 0))


def headline_metrics(study, measured: set[str]) -> dict[str, str]:
    """{metric key: header} for the study's declared metrics as measured (the diagnostics beside them
    stay in --json and the report), so that the status table fits a terminal."""
    from mqvq.metrics.registry import REGISTRY

    families = [("mask" if m == "mask_detail" else m) for m in study.metrics] + (
        ["fid_best"] if study.search.trials else []
    )
    out = {}
    for family in families:
        m = REGISTRY[family]
        out |= {key: m.labels[b] for b, key in m.names.items() if key in measured}
    return out


@app.command("status")
@read_only
@cli_errors
def status(
    name: Name, profile: Profile = "smoke", home: Home = None, tracking_uri: TrackingUri = None, as_json: AsJson = False
) -> None:
    """Rows x finished / running / failed / missing, with their metrics."""
    from mqvq.studies.plan import plan_study
    from mqvq.studies.spec import load_study, row_paper

    study = load_study(name)
    plans = plan_study(open_tracker(tracking_uri, home, read_only=True), study, profile, estimate=False)
    jobs = [p.parent.slurm_job for p in plans if p.parent is not None and p.parent.slurm_job]
    slurm = {}
    if jobs:  # rows submitted to SLURM: what the scheduler says of their tasks
        from mqvq.studies.cluster import slurm_states, task_log, task_state

        slurm = slurm_states(jobs)
    rows = []
    for p in plans:
        rec = p.parent
        row = {
            "row": p.row.name,
            "seed": p.seed,
            "label": p.row.label or p.row.name,
            "status": p.status,
            "run_id": rec.run_id if rec else None,
            "stage1_run": rec.stage1_run if rec else None,
            "stage2_run": rec.stage2_run if rec else None,
            "failure": (rec.failure or None) if rec else None,
            "metrics": p.metrics,
            "paper": row_paper(study, p.row),
        }
        if rec is not None and rec.slurm_job:
            log = task_log(rec)
            state = task_state(rec, p.status == "finished", slurm)
            row["slurm"] = {"job": rec.slurm_job, "state": state, "log": str(log) if log else None}
        rows.append(row)
    if as_json:
        print_json({"study": study.name, "profile": profile, "rows": rows})
        return
    columns = headline_metrics(study, {k for r in rows for k in r["metrics"]})
    colour = {"finished": "green", "running": "yellow", "failed": "red", "missing": "dim"}
    job_columns = ["SLURM task", "SLURM state"] if jobs else []
    cells = [
        [
            r["row"],
            str(r["seed"]),
            f"[{colour[r['status']]}]{r['status']}[/]",
            *([r["slurm"]["job"], r["slurm"]["state"]] if "slurm" in r else ["-", "-"] if jobs else []),
            *[f"{r['metrics'][k]:.4g}" if k in r["metrics"] else "-" for k in columns],
        ]
        for r in rows
    ]
    headers = ["row", "seed", "status", *job_columns, *columns.values()]
    fixed = len(headers) - len(columns)
    shown = columns_that_fit(
        headers, cells, fixed, console.width, ("seed", *columns.values())
    )  # the rest: "also measured"
    columns = dict(list(columns.items())[:shown])
    console.print(
        table(headers[: fixed + shown], [c[: fixed + shown] for c in cells], numeric=("seed", *columns.values()))
    )
    others = sorted({k for r in rows for k in r["metrics"]} - set(columns))
    if others:
        console.print(
            f"[dim]also measured: {', '.join(others)} (--json, or `mqvq report {study.name} --profile {profile}`)[/]"
        )
    for r in rows:
        if r["failure"] and r["status"] == "failed":
            console.print(f"[red]{r['row']}[/]: {escape(r['failure'])}")
        if r.get("slurm") and r["slurm"]["state"] in ("failed", "timeout") and r["status"] != "finished":
            console.print(
                f"[red]{r['row']}[/] (seed {r['seed']}): SLURM task {r['slurm']['job']} {r['slurm']['state']}; "
                f"its log: {escape(str(r['slurm']['log']))}",
                highlight=False,
                soft_wrap=True,
            )


@app.command("submit")
@cli_errors
def submit(
    name: Name,
    profile: Profile = "smoke",
    seeds: Seeds = None,
    only: Only = None,
    backend: Backend = None,
    slurm: Annotated[bool, typer.Option("--slurm", help="submit to SLURM (the scheduler mqvq submits to)")] = False,
    partition: Annotated[Optional[str], typer.Option(help="SLURM partition (default: the cluster's)")] = None,
    account: Annotated[Optional[str], typer.Option(help="SLURM account to charge")] = None,
    qos: Annotated[Optional[str], typer.Option(help="SLURM quality of service")] = None,
    time_limit: Annotated[
        str, typer.Option("--time", help="time limit per task: MINUTES, HH:MM:SS, D-HH or D-HH:MM:SS")
    ] = SLURM.time,
    gpus_per_task: Annotated[int, typer.Option(min=0, max=64, help="GPUs per task")] = SLURM.gpus_per_task,
    cpus_per_task: Annotated[Optional[int], typer.Option(min=1, help="CPU cores per task")] = None,
    mem: Annotated[Optional[str], typer.Option(help="memory per task, e.g. 16G")] = None,
    array_parallelism: Annotated[
        int, typer.Option(min=1, help="tasks of the array running at once")
    ] = SLURM.array_parallelism,
    setup: Annotated[
        Optional[list[str]],
        typer.Option("--setup", help="a shell line before each task, e.g. 'module load cuda' (repeatable)"),
    ] = None,
    max_requeues: Annotated[
        int,
        typer.Option(
            min=0, help="requeues of a task after it reached its time limit (a preempted task is always requeued)"
        ),
    ] = SLURM.max_requeues,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print the sbatch script and what would be queued; queue nothing")
    ] = False,
    home: Home = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Queue one SLURM array task per missing row x seed and return: each runs `study run --only ROW --seeds S`."""
    import contextlib
    import tempfile
    from pathlib import Path

    from mqvq.errors import UserError
    from mqvq.studies.cluster import submit as submit_array
    from mqvq.studies.spec import load_study

    _check_backend(backend)
    if not slurm:
        raise UserError(
            "`study submit` sends a study to a scheduler: pass --slurm (the one mqvq submits to); "
            "`mqvq study run` runs it here."
        )
    study = load_study(name)
    ref = str(Path(name).resolve()) if name.endswith(".toml") else name
    options = SlurmOptions(
        partition,
        account,
        qos,
        time_limit,
        gpus_per_task,
        cpus_per_task,
        mem,
        array_parallelism,
        tuple(setup or ()),
        max_requeues,
    )
    with contextlib.ExitStack() as stack:
        logs_home = None
        if dry_run and not store_exists(
            tracking_uri, home
        ):  # a dry run writes nothing, a store included: plan on an empty one
            from mqvq.tracking import Tracker
            from mqvq.tracking.location import home_path

            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="mqvq-dry-run-"))
            tracker, logs_home = Tracker(None, tmp), home_path(home)
        else:
            tracker = open_tracker(tracking_uri, home)
        sub = submit_array(
            tracker,
            study,
            ref,
            profile,
            options,
            seeds=seeds,
            only=only,
            backend=backend,
            dry_run=dry_run,
            logs_home=logs_home,
        )
    for row, seed, why in sub.skipped:
        console.print(f"[dim]{row} (seed {seed}): {escape(why)}, not submitted[/]")
    if not sub.tasks:
        console.print(f"{study.name} ({profile}): nothing to submit (every row is finished, running or queued).")
        return
    rows = ", ".join(f"{r} (seed {s})" for r, s in sub.tasks)
    if dry_run:
        console.print(
            f"would queue {len(sub.tasks)} task{'s' * (len(sub.tasks) != 1)}: {rows}", highlight=False, soft_wrap=True
        )
        print(sub.script)
        return
    console.print(
        f"queued SLURM job {sub.job_id}: {len(sub.tasks)} task{'s' * (len(sub.tasks) != 1)} ({rows}); logs in "
        f"{sub.log_dir}/{sub.job_id}_<task>/",
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        f"follow it: `mqvq study status {study.name} --profile {profile}` (or `squeue -j {sub.job_id}`); "
        f"stop it: `mqvq study cancel {study.name} --profile {profile}`",
        highlight=False,
        soft_wrap=True,
    )


@app.command("cancel")
@cli_errors
def cancel(name: Name, profile: Profile = "smoke", home: Home = None, tracking_uri: TrackingUri = None) -> None:
    """Cancel the study's queued and running SLURM tasks; their runs end KILLED (resumable)."""
    from mqvq.studies.cluster import cancel as cancel_tasks
    from mqvq.studies.spec import load_study

    study = load_study(name)
    done = cancel_tasks(open_tracker(tracking_uri, home), study, profile)
    if not done:
        console.print(f"{study.name} ({profile}): no queued or running SLURM task to cancel.")
        return
    console.print(
        f"cancelled {len(done)} task{'s' * (len(done) != 1)}: "
        + ", ".join(f"{r} (seed {s}, {j})" for r, s, j in done)
        + "; their runs are KILLED and resume with the next `study run` or `study submit`.",
        highlight=False,
        soft_wrap=True,
    )


@app.command("stage", hidden=True)
@cli_errors
def stage(
    name: Name,
    profile: Profile = "smoke",
    row: Annotated[str, typer.Option(help="the row")] = "",
    seed: Annotated[int, typer.Option(help="the seed")] = 0,
    stage_name: Annotated[str, typer.Option("--stage", help="stage1 or stage2")] = "stage1",
    parent: Annotated[str, typer.Option(help="the row's parent run")] = "",
    run_id: Annotated[Optional[str], typer.Option(help="the run to resume")] = None,
    stage1: Annotated[Optional[str], typer.Option(help="stage 2: the stage-1 run it reads")] = None,
    result: Annotated[str, typer.Option(help="where rank 0 writes the run id (JSON)")] = "",
    device: Device = None,
    home: Home = None,
    tracking_uri: TrackingUri = None,
    progress: Progress = True,
) -> None:
    """One stage of a study row, run by `study run --nproc K` under torchrun (each rank runs this)."""
    import json

    from mqvq.studies.runner import Worker, train_row_stage
    from mqvq.studies.spec import load_study, row_config, select_rows

    study = load_study(name)
    (spec,) = select_rows(study, [row])
    w = Worker(open_tracker(tracking_uri, home), study, profile, None, device, progress, row=row)
    try:
        outcome = {"run_id": train_row_stage(w, row_config(spec, profile, seed), stage_name, parent, run_id, stage1)}
    except KeyboardInterrupt:  # checkpointed and ended KILLED on every rank: not a failure for torchrun to report
        outcome = {"interrupted": True}
    if result and int(__import__("os").environ.get("RANK", "0")) == 0:
        with open(result, "w") as f:
            json.dump(outcome, f)
