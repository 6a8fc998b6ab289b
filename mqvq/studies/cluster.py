"""`mqvq study submit --slurm`, `study cancel` and the SLURM side of `study status`.

One job array per submission, built with submitit: one task per missing row x seed, each running
exactly `mqvq study run STUDY --profile P --only ROW --seeds S` in a child process, so leases,
reuse of shared stage-1 models and resume work as they do by hand. The command returns as soon as
the array is queued. A task that SLURM preempts or that nears its time limit gets SIGUSR2 (its
child checkpoints, ends its runs KILLED and exits) and submitit requeues it: after a time-out at most
`max_requeues` times (submitit's `max_num_timeout`), after a preemption every time (submitit counts
only time-outs: a preempted task did nothing wrong and comes back); a task requeued by hand (`scontrol requeue`) or cancelled gets SIGTERM, which ends the same
way. The requeued task runs the same command, which resumes the row from its last checkpoint.

Where things are: each row's parent run carries the task's job id (`<array job>_<task>`) and its log
folder, `<home>/slurm/<job id>/`, from the moment it is queued (its MLflow status SCHEDULED until the
task starts); `study status` asks `squeue` (and `sacct`, when accounting is on) for their states.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mqvq import signals
from mqvq.errors import UserError
from mqvq.studies.plan import RowPlan, plan_study
from mqvq.studies.runner import ensure_row_run
from mqvq.studies.scheduler import SlurmOptions, parse_time  # noqa: F401  (part of this module's API)
from mqvq.studies.spec import StudyConfig
from mqvq.tracking import tags as T
from mqvq.tracking.location import sqlite_path
from mqvq.tracking.records import RowRecord
from mqvq.tracking.store import Tracker

SHARED_FILESYSTEMS = {
    "nfs",
    "nfs4",
    "lustre",
    "gpfs",
    "beegfs",
    "cifs",
    "smb3",
    "smbfs",
    "ceph",
    "glusterfs",
    "fuse.glusterfs",
    "panfs",
    "wekafs",
    "fuse.sshfs",
    "fuse.juicefs",
    "orangefs",
    "pvfs2",
    "afs",
    "9p",
}
# SLURM job states -> what `study status` says
STATES = {
    "PENDING": "queued",
    "CONFIGURING": "queued",
    "RUNNING": "running",
    "COMPLETING": "running",
    "SUSPENDED": "running",
    "REQUEUED": "requeued",
    "REQUEUE_HOLD": "requeued",
    "REQUEUE_FED": "requeued",
    "RESIZING": "running",
    "PREEMPTED": "requeued",
    "COMPLETED": "completed",
    "FAILED": "failed",
    "NODE_FAIL": "failed",
    "BOOT_FAIL": "failed",
    "OUT_OF_MEMORY": "failed",
    "TIMEOUT": "timeout",
    "DEADLINE": "timeout",
    "CANCELLED": "cancelled",
}


# --------------------------------------------------------------------------- the scheduler
def require_slurm() -> None:
    if shutil.which("sbatch") is None:
        raise UserError(
            "--slurm needs a SLURM client: no `sbatch` on PATH (load the cluster's slurm module, or run "
            "`mqvq study run` instead)."
        )


def _slurm(cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise UserError(
            f"`{' '.join(cmd[:2])}` did not answer in {timeout:.0f} s: is the SLURM controller up?"
        ) from None


def slurm_refusal(stderr: str) -> str:
    """SLURM's own reason, without its prefixes: 'sbatch: error: Batch job submission failed: Invalid
    account or account/partition combination specified' -> 'invalid account or account/partition ...'."""
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    text = lines[-1] if lines else "no reason given"
    text = re.sub(r"^\w+: error: ", "", text)
    text = re.sub(r"^Batch job submission failed: ", "", text)
    return text[:1].lower() + text[1:]


def check_partition(options: SlurmOptions) -> int:
    """The partition exists (and has GPUs when asked for); returns its node count (0: unknown)."""
    if options.partition is None:
        return 0
    p = _slurm(["sinfo", "-h", "-p", options.partition, "-o", "%D|%G"])
    rows = [ln.split("|") for ln in p.stdout.split() if "|" in ln]
    if p.returncode != 0 or not rows:
        raise UserError(
            f"--partition {options.partition!r} is not a partition of this cluster"
            + (f" ({slurm_refusal(p.stderr)})" if p.stderr.strip() else "")
            + ": `sinfo -s` lists them."
        )
    if options.gpus_per_task and not any("gpu" in g for _, g in rows):
        raise UserError(
            f"--gpus-per-task {options.gpus_per_task} asks for GPUs, but partition {options.partition!r} has none "
            f"(no gpu GRES): choose a GPU partition or leave --gpus-per-task out."
        )
    return sum(int(n) for n, _ in rows if n.isdigit())


def filesystem_type(path: Path) -> str:
    """The type of the filesystem `path` is on (from /proc/mounts; '' when unknown)."""
    path = path.resolve()
    best, kind = -1, ""
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    mount = parts[1].replace("\\040", " ")
                    if (str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")) and len(mount) > best:
                        best, kind = len(mount), parts[2]
    except OSError:
        pass
    return kind


def check_shared_store(tracker: Tracker, options: SlurmOptions, nodes: int) -> None:
    """Tasks on other nodes must reach the same store: a SQLite file only works from a shared folder
    (and only for one node at a time in practice); a server or PostgreSQL works from anywhere."""
    db = sqlite_path(tracker.uri)
    if db is None:
        return
    shared = filesystem_type(tracker.home) in SHARED_FILESYSTEMS
    if nodes > 1 and not shared:
        raise UserError(
            f"the tracking store is a SQLite file in {tracker.home}, which is not on a shared filesystem, and "
            f"partition {options.partition!r} has {nodes} nodes: pass --tracking-uri (PostgreSQL or an MLflow "
            f"server) or a --home on a filesystem every node mounts."
        )
    if options.array_parallelism > 1 and nodes != 1 and not shared:
        raise UserError(
            f"--array-parallelism {options.array_parallelism} runs tasks side by side, possibly on several nodes, "
            f"but the SQLite store in {tracker.home} is not on a shared filesystem: pass --tracking-uri "
            f"(PostgreSQL or an MLflow server), a shared --home, or --array-parallelism 1."
        )


# --------------------------------------------------------------------------- one task
class RowTask:
    """What one array task runs: `mqvq study run` for one row and seed, in a child process (so the
    training code handles SLURM's signals itself). submitit requeues it through `checkpoint`."""

    def __init__(self, argv: list[str], env: dict[str, str], needs: tuple[str, ...] = ()):
        self.argv, self.env, self.needs = argv, env, needs
        self.child: subprocess.Popen | None = None

    def __call__(self) -> int:
        job = os.environ.get("SLURM_ARRAY_JOB_ID")
        job_id = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job else os.environ.get("SLURM_JOB_ID", "")
        missing = [name for name in self.needs if name not in os.environ]
        if missing:  # sbatch passes the submitting shell's environment unless the site says --export=NONE
            raise RuntimeError(
                f"{', '.join(missing)} was set where the study was submitted but is not in this task's "
                "environment: export it in the job (sbatch --export=ALL, or --setup 'export NAME=...')."
            )
        env = {**os.environ, **self.env, "MQVQ_SLURM_JOB": job_id}
        self.child = subprocess.Popen(self.argv, env=env)
        # polled, not wait(): submitit's SIGUSR2 handler runs in this thread and waits for the child
        # itself, which a wait() it interrupted would block (Popen's lock) until its timeout
        while (code := self.child.poll()) is None:
            time.sleep(0.5)
        self.child = None
        if code == 130:  # stopped by the scheduler (requeue, preemption, scancel): its runs are KILLED, resumable
            print(
                "mqvq: the row was interrupted by the scheduler; a requeued task resumes it from its last checkpoint.",
                flush=True,
            )
        elif code != 0:
            raise RuntimeError(f"`{shlex.join(self.argv)}` exited with {code}")
        return code

    def checkpoint(self, *args, **kwargs):
        """SIGUSR2 (time limit near, or preemption): the child checkpoints and ends its runs KILLED
        (it got the same signal; SIGTERM makes sure), then this task is requeued as it was."""
        from submitit.core.utils import DelayedSubmission

        child = self.child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=60)  # inside SLURM's --signal delay (90 s), before the kill
            except subprocess.TimeoutExpired:
                child.kill()
        print(
            "mqvq: stopped for preemption or the time limit; the row resumes from its last checkpoint when this task "
            "is requeued.",
            flush=True,
        )
        return DelayedSubmission(RowTask(self.argv, self.env, self.needs), *args, **kwargs)

    def __getstate__(self):
        return {"argv": self.argv, "env": self.env, "needs": self.needs, "child": None}


def task_environment(environ: dict[str, str]) -> tuple[dict[str, str], tuple[str, ...]]:
    """What a task carries of the submitting environment: mqvq's own settings by value, MLflow's by
    name only. The task is pickled into the job folder on a shared file system, and MLflow's values
    include credentials (MLFLOW_TRACKING_PASSWORD, MLFLOW_TRACKING_TOKEN); the task reads them from
    its own environment, which sbatch copies from the submitting shell."""
    return (
        {k: v for k, v in environ.items() if k.startswith("MQVQ_")},
        tuple(sorted(k for k in environ if k.startswith("MLFLOW_"))),
    )


def task_command(
    study: StudyConfig,
    study_ref: str,
    profile: str,
    row: str,
    seed: int,
    tracker: Tracker,
    backend: str | None = None,
    nproc: int = 1,
) -> list[str]:
    """Exactly what `study run --only ROW --seeds S` is on the command line, store included (with
    several GPUs per task, `--nproc K`: each stage under torchrun, one process per GPU)."""
    argv = [
        sys.executable,
        "-m",
        "mqvq",
        "study",
        "run",
        study_ref,
        "--profile",
        profile,
        "--only",
        row,
        "--seeds",
        str(seed),
        "--home",
        str(tracker.home),
        "--no-progress",
        *(["--nproc", str(nproc)] if nproc > 1 else []),
    ]
    if sqlite_path(tracker.uri) is None or os.environ.get("MLFLOW_TRACKING_URI"):
        argv += ["--tracking-uri", tracker.uri]
    if backend:
        argv += ["--backend", backend]
    return argv


# --------------------------------------------------------------------------- submit
@dataclass
class Submission:
    job_id: str | None  # None for a dry run
    tasks: list[tuple[str, int]]  # (row, seed) per array task, in task order
    script: str  # the sbatch script submitit writes
    log_dir: Path
    skipped: list[tuple[str, int, str]] = field(default_factory=list)  # (row, seed, why)


def missing_tasks(plans: list[RowPlan]) -> tuple[list[RowPlan], list[tuple[str, int, str]]]:
    """The rows a submission runs: not finished, not running elsewhere (a live lease), not queued
    already (a task of an earlier submission that is still pending or running)."""
    todo, skipped = [], []
    queued = slurm_states([p.parent.slurm_job for p in plans if p.parent is not None and p.parent.slurm_job])
    for p in plans:
        if not p.todo and p.status == T.Status.FINISHED:
            continue
        if p.status == T.Status.RUNNING:
            skipped.append((p.row.name, p.seed, "running in another worker"))
            continue
        job = p.parent.slurm_job if p.parent is not None else None
        if job and queued.get(job) in ("queued", "running", "requeued"):
            skipped.append((p.row.name, p.seed, f"already {queued[job]} as SLURM task {job}"))
            continue
        todo.append(p)
    return todo, skipped


def _executor(folder: Path, study: StudyConfig, options: SlurmOptions):
    import submitit

    executor = submitit.AutoExecutor(
        folder=str(folder / "%j"), cluster="slurm", slurm_max_num_timeout=options.max_requeues
    )
    params = {
        "name": f"mqvq-{study.name}",
        "timeout_min": options.minutes,
        "slurm_array_parallelism": options.array_parallelism,
        "slurm_signal_delay_s": options.signal_delay_s,
        "slurm_setup": list(options.setup),
        "slurm_additional_parameters": {"requeue": True},
    }
    for key, value in (
        ("slurm_partition", options.partition),
        ("slurm_account", options.account),
        ("slurm_qos", options.qos),
        ("cpus_per_task", options.cpus_per_task),
        ("slurm_mem", options.mem),
    ):
        if value is not None:
            params[key] = value
    if options.gpus_per_task:
        params["slurm_gpus_per_task"] = options.gpus_per_task
    executor.update_parameters(**params)
    return executor


def sbatch_script(executor, tasks: int) -> str:
    """The sbatch script submitit writes for an array of `tasks` (its own text, as submitted)."""
    slurm = executor._executor  # noqa: SLF001  (submitit 1.5's SlurmExecutor: the text it submits)
    saved = dict(slurm.parameters)
    try:
        if tasks > 1:
            slurm.parameters["map_count"] = tasks
        return slurm._make_submission_file_text(slurm._submitit_command_str, "dry-run")  # noqa: SLF001
    finally:
        slurm.parameters = saved


def submit(
    tracker: Tracker,
    study: StudyConfig,
    study_ref: str,
    profile: str,
    options: SlurmOptions,
    *,
    seeds: list[int] | None = None,
    only: list[str] | None = None,
    backend: str | None = None,
    dry_run: bool = False,
    logs_home: Path | None = None,
) -> Submission:
    """Queue one array task per missing row x seed; returns at once (None job id for a dry run).
    `logs_home`: the home whose `slurm/` folder the script names, when `tracker` is not its store (a dry
    run on a home without one plans against an empty store rather than create it)."""
    require_slurm()
    options.minutes  # a bad --time is refused before anything else
    nodes = check_partition(options)
    check_shared_store(tracker, options, nodes)
    plans = plan_study(tracker, study, profile, seeds, only, backend, estimate=False)
    todo, skipped = missing_tasks(plans)
    folder = (logs_home or tracker.home) / "slurm"
    executor = _executor(folder, study, options)
    tasks = [(p.row.name, p.seed) for p in todo]
    script = sbatch_script(executor, len(tasks)) if tasks else ""
    if dry_run or not tasks:
        return Submission(None, tasks, script, folder, skipped)
    env, needs = task_environment(dict(os.environ))
    calls = [
        RowTask(
            task_command(
                study, study_ref, profile, p.row.name, p.seed, tracker, backend, max(1, options.gpus_per_task)
            ),
            env,
            needs,
        )
        for p in todo
    ]
    parents: list[str] = []
    queued = False
    try:
        for p in todo:  # before the tasks can start and claim them
            parents.append(ensure_row_run(tracker, study, p, profile))
            tracker.schedule_run(parents[-1])
        with signals.deferred():  # sbatch queues the whole array or nothing, and its job ids reach the runs
            try:
                with executor.batch():
                    jobs = [executor.submit(call) for call in calls]
            except Exception as e:  # submitit raises its own types for sbatch's refusals
                text = getattr(e, "stderr", None) or str(e)
                raise UserError(
                    f"SLURM refused the array: {slurm_refusal(text if isinstance(text, str) else str(text))}."
                ) from None
            for parent, job in zip(parents, jobs):
                tracker.set_tags(
                    parent, {T.SLURM_JOB: job.job_id, T.SLURM_LOG: str(folder / job.job_id), T.SLURM_CANCELLED: ""}
                )
            queued = True
    except (UserError, KeyboardInterrupt) as e:
        if not queued:  # no task will ever run these rows: not SCHEDULED for good
            why = "SLURM refused the submission" if isinstance(e, UserError) else "the submission was interrupted"
            for parent in parents:
                tracker.end_run(parent, "KILLED", why)
        raise
    return Submission(jobs[0].job_id.split("_")[0], tasks, script, folder, skipped)


# --------------------------------------------------------------------------- status and cancel
def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """{job id: queued | running | requeued | completed | failed | timeout | cancelled} for the ids the
    scheduler still knows: `squeue` for live tasks, `sacct` for ended ones when accounting is on."""
    if not job_ids or shutil.which("squeue") is None:
        return {}
    arrays = sorted({j.split("_")[0] for j in job_ids})
    out: dict[str, str] = {}
    q = _slurm(["squeue", "-h", "-r", "-j", ",".join(arrays), "-O", "JobArrayID:|,State:|,RestartCnt:|"])
    for line in q.stdout.split():
        job, state, restarts, *_ = (line.split("|") + ["", ""])[:3]
        pending_again = state == "PENDING" and restarts.strip() not in ("", "0")  # requeued, waiting to run again
        out[job.strip()] = "requeued" if pending_again else STATES.get(state, state.lower())
    if shutil.which("sacct"):
        a = _slurm(["sacct", "-n", "-P", "-X", "-j", ",".join(arrays), "-o", "JobID,State"])
        if a.returncode == 0:  # without accounting sacct refuses: the queue is all we know
            for line in a.stdout.split("\n"):
                job, _, state = line.partition("|")
                state = state.split(" ")[0]
                if job and job not in out:
                    out[job] = STATES.get(state, state.lower())
    return {j: out[j] for j in job_ids if j in out}


def task_state(rec: RowRecord, finished: bool, live: dict[str, str]) -> str:
    """What became of a row's task: the scheduler's word while it knows the task (`slurm_states`), else
    what mqvq recorded (a cluster without accounting forgets ended tasks at once)."""
    if rec.slurm_job in live:
        return live[rec.slurm_job]
    return "completed" if finished else "cancelled" if rec.slurm_cancelled else "not in the queue"


def task_log(rec: RowRecord) -> Path | None:
    """The log of a row's task: submitit's `<job>_0_log.out` in the task's folder."""
    if not rec.slurm_log or not rec.slurm_job:
        return None
    folder = Path(rec.slurm_log)
    found = sorted(folder.glob("*_log.out")) if folder.is_dir() else []
    return found[0] if found else folder / f"{rec.slurm_job}_0_log.out"


def cancel(tracker: Tracker, study: StudyConfig, profile: str, wait_s: float = 90.0) -> list[tuple[str, int, str]]:
    """Cancel the study's queued and running tasks; their runs end KILLED. Returns (row, seed, job id)."""
    require_slurm()
    plans = plan_study(tracker, study, profile, estimate=False)
    recs = [p.parent for p in plans if p.parent is not None and p.parent.slurm_job]
    live = slurm_states([r.slurm_job for r in recs])
    mine = [r for r in recs if live.get(r.slurm_job) in ("queued", "running", "requeued")]
    if not mine:
        return []
    p = _slurm(["scancel", *[r.slurm_job for r in mine]])
    if p.returncode != 0:
        raise UserError(f"scancel refused: {slurm_refusal(p.stderr)}.")
    deadline = time.monotonic() + wait_s  # running tasks end their own runs KILLED on SIGTERM: give them the time
    while time.monotonic() < deadline and any(
        s in ("running", "queued", "requeued") for s in slurm_states([r.slurm_job for r in mine]).values()
    ):
        time.sleep(1.0)
    for r in mine:  # a task cancelled before it started, or killed before it could end its runs, leaves them to us
        reason = f"cancelled (SLURM task {r.slurm_job})"
        tracker.set_tags(r.run_id, {T.SLURM_CANCELLED: "true"})
        _end_running_below(tracker, r.run_id, reason)
        if tracker.get_run(r.run_id).info.status in ("RUNNING", "SCHEDULED"):
            tracker.end_run(r.run_id, "KILLED", reason)
    return [(r.row, r.seed, r.slurm_job) for r in mine]


def _end_running_below(tracker: Tracker, run_id: str, reason: str) -> None:
    """End KILLED every RUNNING run below `run_id`, at any depth and in any experiment: the stage runs
    under a row, and the sampling-search trials under a stage-2 run (in their own experiment)."""
    for run in tracker.find_runs_everywhere(f'{T.running()} and tags."{T.MLFLOW_PARENT}" = {T.quote(run_id)}'):
        _end_running_below(tracker, run.info.run_id, reason)
        tracker.end_run(run.info.run_id, "KILLED", reason)
