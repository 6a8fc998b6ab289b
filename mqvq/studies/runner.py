"""`mqvq study run`: stage 1 -> tokens -> stage 2 -> eval for every row that is not done.

Finished rows are skipped; a finished stage-1 model with the same content hash is reused from
anywhere in the store; an interrupted stage resumes from its checkpoint; a failing row is
recorded as failed with its reason and the worker moves on (the command exits non-zero at the
end). Several workers on the same study and store split the rows: each row is claimed with a
lease (see `lease.py`), so it runs exactly once and a killed worker's row is taken over.
"""

from __future__ import annotations

import contextlib
import enum
import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

from rich.markup import escape

from mqvq import signals
from mqvq.config import config_hash, identity
from mqvq.errors import LeaseLost, UserError
from mqvq.metrics import metric_family, metric_stage
from mqvq.metrics.registry import backend_of, best, named_step_seconds
from mqvq.runtime import duration
from mqvq.studies import lease
from mqvq.studies.plan import (
    RowPlan,
    Step,
    expected_metrics,
    find_row_runs,
    optional_metrics,
    plan_study,
    replan_row,
    searched_metric,
    stage2_state,
    study_experiment,
)
from mqvq.studies.spec import StudyConfig, row_paper
from mqvq.tracking import tags as T
from mqvq.tracking.provenance import git_commit
from mqvq.tracking.records import HEARTBEAT_S, LEASE_TIMEOUT_S, DataRecord, RowRecord
from mqvq.tracking.store import Tracker


@dataclass(frozen=True)
class Worker:
    """What every row a worker runs shares: the store, the study and profile, and how to run it."""

    tracker: Tracker
    study: StudyConfig
    profile: str
    backend: str | None = None
    device: str | None = None
    progress: bool = True
    log: Callable[[str], None] = print
    nproc: int = 1  # processes per training stage (torchrun, one per GPU)
    row: str = ""  # the row being trained (tags its stage runs)

    @property
    def experiment(self) -> str:
        return study_experiment(self.study.name, self.profile)


class Outcome(str, enum.Enum):
    """What `study run` did with a row."""

    FINISHED = "finished"
    SKIPPED = "skipped"  # already done
    BUSY = "busy"  # another worker holds it
    FAILED = "failed"
    LOST = "lost"  # taken over while this worker was stalled

    def __str__(self) -> str:
        return self.value


@dataclass
class RowResult:
    row: str
    seed: int
    status: Outcome
    detail: str = ""
    metrics: dict = field(default_factory=dict)


def ensure_row_run(tracker: Tracker, study: StudyConfig, p: RowPlan, profile: str) -> str:
    """Get or create the row's parent run; duplicates from racing workers on other machines are folded."""
    experiment = study_experiment(study.name, profile)
    with lease.lease_lock(tracker):
        runs = find_row_runs(tracker, experiment, study.name, p.row.name, p.seed)
        if runs:
            return runs[0].run_id
        record = RowRecord(
            study=study.name,
            row=p.row.name,
            seed=p.seed,
            profile=profile,
            experiment=p.row.experiment,
            label=p.row.label or p.row.name,
            table=study.table,
            config_hash=config_hash(identity(p.cfg)),
        )
        params = {
            "experiment": p.row.experiment,
            "overrides": " ".join(p.row.overrides),
            "seed": p.seed,
            "profile": profile,
        }
        params |= {f"paper.{k}": v for k, v in sorted(row_paper(study, p.row).items())}
        run_id = tracker.start_run(experiment, f"{p.row.name}-s{p.seed}", record.tags(), params)
        tracker.set_tags(run_id, {T.STATUS: T.Status.MISSING.value})
    runs = find_row_runs(tracker, experiment, study.name, p.row.name, p.seed)
    canonical = runs[0].run_id  # the oldest parent wins
    if canonical != run_id:
        tracker.delete_run(run_id)
    return canonical


def run_study(
    tracker: Tracker,
    study: StudyConfig,
    profile: str,
    *,
    seeds: list[int] | None = None,
    only: list[str] | None = None,
    backend: str | None = None,
    device: str | None = None,
    progress: bool = True,
    lease_timeout: float = LEASE_TIMEOUT_S,
    heartbeat: float = HEARTBEAT_S,
    settle: float | None = None,
    log: Callable[[str], None] = print,
    workers: int = 1,
    nproc: int = 1,
) -> list[RowResult]:
    """`workers`: how many processes share the rows (the ETA divides what is left between them);
    `nproc`: processes per training stage, launched with torchrun (one per GPU: DDP)."""
    worker = lease.worker_id()
    heartbeat = min(heartbeat, lease_timeout / 4)  # several beats inside the timeout, however short it is set
    if settle is None:  # claims are only racy across machines, i.e. with a server store
        settle = 0.0 if tracker.uri.startswith("sqlite:") else 2.0
    for rid in lease.reap_stale_runs(tracker, study_experiment(study.name, profile), lease_timeout):
        log(
            f"[yellow]run {rid} had stopped without finishing (no heartbeat): marked KILLED, resumable from its checkpoint[/]"
        )
    plans = plan_study(tracker, study, profile, seeds, only, backend, lease_timeout, device=device)
    results = []
    eta = Eta([p.estimate_s for p in plans], workers)
    if any(p.todo or p.status != T.Status.FINISHED for p in plans):
        log(f"{study.name} ({profile}): {eta.describe(0)}")
    for i, p in enumerate(plans):
        label = f"[{i + 1}/{len(plans)}] {p.row.name} (seed {p.seed})"
        if not p.todo and p.status == T.Status.FINISHED:
            results.append(RowResult(p.row.name, p.seed, Outcome.SKIPPED, "already finished", p.metrics))
            log(f"[dim]{label}: done[/]")
            eta.finished(i, None)
            continue
        started = time.monotonic()
        parent = claimed = None
        try:
            with signals.deferred():  # the row's run and its claim exist only together with the code that ends them
                parent = ensure_row_run(tracker, study, p, profile)
                claimed = lease.claim(tracker, parent, worker, lease_timeout, settle)
            if not claimed:
                results.append(RowResult(p.row.name, p.seed, Outcome.BUSY, "claimed by another worker"))
                log(f"[yellow]{label}: running in another worker, skipped[/]")
                eta.finished(i, None)
                continue
            # re-plan under the lease: another worker may have finished it in the meantime
            fresh = replan_row(tracker, study, p, profile, backend, lease_timeout)
            if not fresh.todo and fresh.status == T.Status.FINISHED:
                results.append(
                    RowResult(p.row.name, p.seed, Outcome.SKIPPED, "finished by another worker", fresh.metrics)
                )
                continue
            if any(st.state == Step.BUSY for st in fresh.stages.values()):  # a stage run with a live trainer elsewhere
                results.append(
                    RowResult(p.row.name, p.seed, Outcome.BUSY, "a stage of it is being trained by a live process")
                )
                log(
                    f"[yellow]{label}: a stage run of it is still being trained elsewhere (fresh heartbeat), skipped[/]"
                )
                eta.finished(i, None)
                continue
            with lease.Heartbeat(tracker, parent, heartbeat, worker):
                results.append(
                    _run_row(
                        Worker(tracker, study, profile, backend, device, progress, log, nproc), fresh, parent, label
                    )
                )
            eta.finished(i, time.monotonic() - started)
            if any(e != 0 for e in eta.estimates[i + 1 :]):
                log(f"[dim]{eta.describe(i + 1)}[/]")
        except LeaseLost as e:  # taken over while stalled: the row is the other worker's; write nothing, stop
            claimed = False
            results.append(RowResult(p.row.name, p.seed, Outcome.LOST, str(e)))
            log(f"[red]{label}: {escape(str(e))}[/]")
            break
        except KeyboardInterrupt:
            if claimed:  # resumable: the next `study run` (or a requeued task) continues it
                tracker.end_run(parent, "KILLED", "interrupted")
            raise
        finally:
            if claimed:
                lease.release(tracker, parent, worker)
    return results


class Eta:
    """Time left in a study: the plan's per-row estimates (from measured step times), scaled by how
    long the rows run so far actually took against their estimates. The scale starts from one
    typical row at its estimate, so one odd row (a reused model, an unmeasured bigger one) does not
    swing it."""

    def __init__(self, estimates: list[float | None], workers: int = 1):
        self.estimates = estimates
        self.workers = workers  # processes sharing the rows, each as fast as the estimates say
        self.took: dict[int, float] = {}

    def finished(self, i: int, seconds: float | None) -> None:
        if seconds is not None:
            self.took[i] = seconds
        else:
            self.estimates[i] = 0.0

    def remaining(self, start: int) -> float | None:
        rest = self.estimates[start:]
        if any(e is None for e in rest):
            return None
        measured = [(self.took[i], self.estimates[i]) for i in self.took if self.estimates[i]]
        known = [e for e in self.estimates if e]
        prior = sum(known) / len(known) if known else 0.0
        scale = (sum(t for t, _ in measured) + prior) / (sum(e for _, e in measured) + prior) if measured else 1.0
        return scale * sum(rest) / self.workers

    def describe(self, start: int) -> str:
        n = sum(e != 0 for e in self.estimates[start:])
        left = self.remaining(start)
        if left is None:
            return f"{n} row{'s' * (n != 1)} to go (no time estimate: nothing measured yet on this device)"
        at = time.strftime("%H:%M", time.localtime(time.time() + left))
        shared = f" between {self.workers} workers" if self.workers > 1 else ""
        return f"{n} row{'s' * (n != 1)} to go{shared}, about {duration(left)} (until about {at})"


def metrics_line(metrics: dict[str, float]) -> str:
    """`name=value` pairs: a terminal wraps between pairs, never inside one."""
    return "  ".join(f"{k}={v:.4g}" for k, v in metrics.items())


def train_row_stage(w: Worker, cfg, stage: str, parent: str, run_id: str | None, stage1_run: str | None = None) -> str:
    """Train (or resume) one stage of a row in this process (one rank of it under torchrun); its run id."""
    from mqvq.stages.train_stage1 import train_stage1
    from mqvq.stages.train_stage2 import train_stage2

    common = dict(
        run_id=run_id,
        device=w.device,
        progress=w.progress,
        mlflow_experiment=w.experiment,
        parent_run_id=parent,
        tags={T.STUDY: w.study.name, T.ROW: w.row},
    )
    if stage == "stage1":
        return train_stage1(cfg, w.tracker, **common)["run_id"]
    return train_stage2(cfg, w.tracker, stage1=stage1_run, **common)["run_id"]


def _train(w: Worker, p: RowPlan, stage: str, parent: str, run_id: str | None, stage1_run: str | None = None) -> str:
    """One stage of the row: here, or with `nproc` processes under torchrun (`mqvq study stage`)."""
    import dataclasses

    w = dataclasses.replace(w, row=p.row.name)
    if w.nproc == 1:
        return train_row_stage(w, p.cfg, stage, parent, run_id, stage1_run)
    import json
    import subprocess
    import sys
    import tempfile

    from mqvq.studies import launch
    from mqvq.studies.spec import find_study

    with tempfile.TemporaryDirectory() as tmp:
        result = f"{tmp}/result.json"
        cmd = [
            sys.executable,
            "-m",
            launch.__name__,
            "--standalone",
            "--nproc_per_node",
            str(w.nproc),
            "-m",
            "mqvq",
            "study",
            "stage",
            str(find_study(w.study.name)),
            "--profile",
            w.profile,
            "--row",
            p.row.name,
            "--seed",
            str(p.seed),
            "--stage",
            stage,
            "--parent",
            parent,
            "--result",
            result,
            "--home",
            str(w.tracker.home),
            "--tracking-uri",
            w.tracker.uri,
            *(["--run-id", run_id] if run_id else []),
            *(["--stage1", stage1_run] if stage1_run else []),
            *(["--device", w.device] if w.device else []),
            *([] if w.progress else ["--no-progress"]),
        ]
        child = subprocess.Popen(cmd, env=TORCHRUN_ENV | dict(os.environ))
        try:
            code = child.wait()
        except KeyboardInterrupt:  # the ranks agree on a step, checkpoint and end the run KILLED; wait for them
            stop_ranks(child.pid)
            child.wait()
            raise
        outcome = {}
        if os.path.exists(result):
            with open(result) as f:
                outcome = json.load(f)
        if outcome.get("interrupted"):  # a stop signal reached the ranks (only): the row stops as on Ctrl-C here
            raise KeyboardInterrupt
        if code != 0 or "run_id" not in outcome:
            raise UserError(f"{stage} under torchrun ({w.nproc} processes) exited with {code}: see its messages above.")
        return outcome["run_id"]


# torchrun's agent dies of SIGUSR2 (SLURM's warning before the time limit) unless it handles it: it then
# passes it to the ranks and waits for them (a checkpoint, the run's end) before SIGKILL. Environment
# values rather than flags, which torch releases before 2.8 do not know (they ignore these).
TORCHRUN_ENV = {"PET_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR2", "PET_SHUTDOWN_TIMEOUT": "120"}


def stop_ranks(agent: int) -> None:
    """Ask the ranks below torchrun's agent to stop (SIGUSR2; they ignore a repeat): sent to the agent,
    a second signal while it already shuts them down would make it quit waiting for them."""
    import signal

    import psutil

    try:
        ranks = psutil.Process(agent).children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for rank in ranks:
        with contextlib.suppress(psutil.NoSuchProcess):
            rank.send_signal(signal.SIGUSR2)


def _run_row(w: Worker, p: RowPlan, parent: str, label: str) -> RowResult:
    tracker, study, log = w.tracker, w.study, w.log
    started = time.monotonic()
    tracker.resume_run(parent)
    tracker.set_tags(
        parent,
        {T.GIT_COMMIT: git_commit()}
        | ({T.SLURM_JOB: os.environ["MQVQ_SLURM_JOB"]} if os.environ.get("MQVQ_SLURM_JOB") else {}),
    )
    try:
        s1 = p.stages["stage1"]
        if s1.state.has_model:
            stage1_run = s1.run_id
            log(f"{label}: stage 1 {s1.state} ({stage1_run})")
        else:
            log(f"{label}: stage 1 {'resuming' if s1.state == Step.RESUMABLE else 'training'}")
            stage1_run = _train(w, p, "stage1", parent, s1.run_id if s1.state == Step.RESUMABLE else None)
        s1_tags = tracker.get_run(stage1_run).data.tags
        data_cfg = p.cfg.stage1.data
        data = DataRecord(data_cfg.name, data_cfg.resolution, s1_tags.get(T.DATA_DIGEST, "?"))
        tracker.set_tags(
            parent,
            {
                T.STAGE1_RUN: stage1_run,
                T.DATA_NAME: data.name,
                T.DATA_RESOLUTION: data.resolution,
                T.DATA_DIGEST: data.digest,
            },
        )
        tracker.copy_datasets(stage1_run, parent, "training")  # the row shows the data it was trained on
        stage2_run = None
        if p.row.stage2:
            s2 = p.stages["stage2"]
            if s2.state == Step.AFTER_STAGE1:  # stage 1 was trained just now: stage 2's identity needs its checkpoint
                s2 = stage2_state(p, stage1_run)
            if s2.state.has_model:
                stage2_run = s2.run_id
                log(f"{label}: stage 2 {s2.state} ({stage2_run})")
            else:
                log(f"{label}: stage 2 {'resuming' if s2.state == Step.RESUMABLE else 'training'}")
                stage2_run = _train(
                    w, p, "stage2", parent, s2.run_id if s2.state == Step.RESUMABLE else None, stage1_run
                )
            tracker.set_tags(parent, {T.STAGE2_RUN: stage2_run})
        metrics = _evaluate_row(w, p, parent, stage1_run, stage2_run)
        if study.search.trials and stage2_run:
            metrics |= _search_row(w, p, parent, stage2_run)
        tracker.end_run(parent, "FINISHED")
        log(f"[green]{label}: finished[/] in {duration(time.monotonic() - started)}: {metrics_line(metrics)}")
        return RowResult(p.row.name, p.seed, Outcome.FINISHED, "", metrics)
    except (KeyboardInterrupt, LeaseLost):
        raise
    except Exception as e:
        reason = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
        tracker.end_run(parent, "FAILED", reason)
        if not isinstance(e, UserError):
            tracker.log_text(parent, traceback.format_exc(), "failure.txt")
        log(f"[red]{label}: failed[/]: {escape(reason)}")
        return RowResult(p.row.name, p.seed, Outcome.FAILED, reason)


def _evaluate_row(w: Worker, p: RowPlan, parent: str, stage1_run: str, stage2_run: str | None) -> dict:
    """Evaluate what is missing on the stage runs, then copy the row's numbers (and their tags) to its parent."""
    from mqvq.stages.evaluate import evaluate_run

    tracker, study = w.tracker, w.study
    want = expected_metrics(study, p.cfg, w.backend)
    for stage, run_id in (("stage1", stage1_run), ("stage2", stage2_run)):
        metrics = study.stage_metrics(stage)
        if run_id is None or not metrics:
            continue
        have = tracker.get_run(run_id).data.metrics
        needed = {metric_family(n) for n in want if metric_stage(n) == stage and n not in have}
        todo = [m for m in metrics if m in needed]  # only the metric families that are missing
        if todo:
            w.log(f"  evaluating {stage}: {', '.join(todo)}")
            evaluate_run(tracker, run_id, [*todo, "figures"], backend=w.backend, device=w.device, progress=w.progress)
    values, tags = {}, {}
    for stage, run_id in (("stage1", stage1_run), ("stage2", stage2_run)):
        if run_id is None:
            continue
        run = tracker.get_run(run_id).data
        have = named_step_seconds(run.metrics, stage)  # a stage run trained before the per-stage name
        for name in [*want, *optional_metrics(study)]:
            if name in have:
                values[name] = have[name]
                tags |= {
                    k: v for k, v in run.tags.items() if k.startswith(T.eval_tag(name, "")) or k in T.EVAL_ENVIRONMENT
                }
    if values:
        tracker.log_metrics(parent, values, step=0)
    tracker.set_tags(parent, tags)
    return values


def _search_row(w: Worker, p: RowPlan, parent: str, stage2_run: str) -> dict:
    """The sampling-search study: best distance over top-k / top-p for the row's model (Table 1's protocol)."""
    from mqvq.studies.search import plan_search, run_search

    tracker, s = w.tracker, w.study.search
    metric = searched_metric(p.cfg, w.backend)
    asked = dict(num_samples=s.num_samples or None, metric=metric, rungs=list(s.rungs), seed=p.seed)
    spec = plan_search(tracker, stage2_run, trials=s.trials, sampler=s.sampler, **asked)
    n = spec.num_samples
    w.log(f"  sampling search: {s.trials} trials ({s.sampler}), {n} samples each")
    summary = run_search(tracker, spec, device=w.device, progress=w.progress, log=lambda m: None)
    if "best_value" not in summary:
        return {}
    values = {best(metric): summary["best_value"]}
    tracker.log_metrics(parent, values, step=0)
    tracker.set_tags(
        parent,
        {
            T.eval_tag(best(metric), "num"): n,
            T.eval_tag(best(metric), "trials"): summary["trials"],
            T.eval_tag(best(metric), "backend"): backend_of(metric),
        },
    )
    return values


def exit_code(results: list[RowResult]) -> int:
    return 1 if any(r.status in (Outcome.FAILED, Outcome.LOST) for r in results) else 0
