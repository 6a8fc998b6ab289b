"""Optuna search over sampling settings (top-k / top-p / temperature for codes and positions)
of one trained stage-2 model, minimising a Fréchet distance on generated samples.

- Storage: a journal file under <home>/optuna/ by default (safe for several processes on one
  machine), or an RDB URL (PostgreSQL) for several machines; SQLite is refused with parallel workers.
- `trials` counts trials in total: a rerun continues the same Optuna study and a finished search
  starts nothing. Counting and asking happen under a file lock, so parallel workers on one
  machine never exceed it, and a grid search never hands out a point twice.
- Pruning on a growing sample count: the distance is reported at each rung (e.g. 1k -> 5k -> N
  samples, the statistics accumulate) and a pruner stops poor settings early.
- Dead workers: a worker killed mid-trial (SIGKILL, a lost node) leaves its trial RUNNING. Each
  worker proves it is alive every `heartbeat` seconds; a trial silent for `GRACE_BEATS` of them is
  failed, does not count towards `trials`, and its parameters are tried again. On an RDB storage
  this is Optuna's own heartbeat (`heartbeat_interval`, `grace_period`) with its
  `RetryHeartbeatStaleTrialCallback`; on the journal file it is the lease rule study rows use
  (`records.lease_is_live`: a fresh heartbeat, and a live process when it ran on this machine).
- Every trial is an MLflow child run of the model's run (explicit parent id, so it works from any
  process); the best values are written back to the model's run as `tags.SAMPLING_BEST` tags,
  which `mqvq sample / eval --sampling best` use.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mqvq.config import DataConfig, from_dict, validate_sampling
from mqvq.config.schema import (
    PRUNERS,
    SAMPLERS,
    SEARCH_CFG_SCALE,
    SEARCH_HEARTBEAT_S,
    SEARCH_MAX_SAMPLES,
    SEARCH_RUNGS,
    SEARCH_TEMPERATURE,
    SEARCH_TOP_P,
)
from mqvq.errors import UserError, one_of
from mqvq.stages.generate import BEST_PREFIX, INT_PARAMS, load_generator, sample_images
from mqvq.files import file_lock
from mqvq.metrics.registry import backend_of
from mqvq.periodic import Periodic
from mqvq.stages.lookup import resolve
from mqvq.studies.lease import worker_id
from mqvq.tracking import tags as T
from mqvq.tracking.records import TrialRecord, lease_is_live
from mqvq.tracking.location import require_driver
from mqvq.tracking.store import Tracker


@dataclass(frozen=True)
class Range:
    low: float
    high: float

    @property
    def fixed(self) -> bool:
        return self.low == self.high


def parse_range(name: str, text: str) -> Range:
    """`LOW:HIGH` or a single value (fixed); checked against what the parameter allows."""
    parts = text.split(":")
    try:
        vals = [int(p) if name in INT_PARAMS else float(p) for p in parts]
    except ValueError:
        kind = "integers" if name in INT_PARAMS else "numbers"
        raise UserError(
            f"--{name.replace('_', '-')} {text!r} is invalid: use LOW:HIGH or one value ({kind})."
        ) from None
    if len(vals) not in (1, 2):
        raise UserError(f"--{name.replace('_', '-')} {text!r} is invalid: use LOW:HIGH or one value.")
    r = Range(vals[0], vals[-1])
    check_range(name, r)
    return r


def check_range(name: str, r: Range) -> None:
    opt = "--" + name.replace("_", "-")
    if r.low > r.high:
        raise UserError(f"{opt} {r.low}:{r.high} is an empty range: LOW must not exceed HIGH.")
    if name in INT_PARAMS and r.low < 1:
        raise UserError(f"{opt} range {r.low}:{r.high} is invalid: top-k values must be at least 1.")
    if name.startswith("top_p") and not (0 < r.low and r.high <= 1):
        raise UserError(f"{opt} range {r.low}:{r.high} is invalid: top-p values must lie in (0, 1].")
    if name.startswith("temperature") and r.low <= 0:
        raise UserError(f"{opt} range {r.low}:{r.high} is invalid: temperatures must be positive.")
    if name == "cfg_scale" and r.low < 0:
        raise UserError(f"{opt} range {r.low}:{r.high} is invalid: guidance scales must be >= 0 (1 = no guidance).")


def default_space(codebook_size: int, grid_len: int, raster: bool, guided: bool = False) -> dict[str, Range]:
    """`guided`: the model was trained with condition dropout, so the guidance scale is searched too."""
    top_p, temperature = Range(*SEARCH_TOP_P), Range(*SEARCH_TEMPERATURE)
    space = {"top_k": Range(1, codebook_size), "top_p": top_p, "temperature": temperature}
    if not raster:
        space |= {"top_k_pos": Range(1, grid_len), "top_p_pos": top_p, "temperature_pos": temperature}
    if guided:
        space["cfg_scale"] = Range(*SEARCH_CFG_SCALE)
    return space


def grid_points(name: str, r: Range, n: int) -> list:
    if r.fixed or n == 1:
        return [int(r.low) if name in INT_PARAMS else r.low]
    if name in INT_PARAMS:  # log-spaced integers
        return sorted({int(round(v)) for v in np.geomspace(r.low, r.high, n)})
    return [round(float(v), 6) for v in np.linspace(r.low, r.high, n)]


# --------------------------------------------------------------------------- storage
def trial_size(asked: int | None, eval_num_samples: int, rungs=()) -> tuple[int, list[int]]:
    """A search's samples per trial and its pruning rungs: as asked, else the defaults (config.schema)."""
    n = asked or min(eval_num_samples, SEARCH_MAX_SAMPLES)
    return n, list(rungs) or [r for r in SEARCH_RUNGS if r < n]


def parse_rungs(text: str | None) -> list[int]:
    """`--rungs 1000,5000`: the sample counts at which poor trials may be pruned ([] = the defaults)."""
    try:
        return [int(r) for r in text.split(",")] if text else []
    except ValueError:
        raise UserError(f"--rungs {text!r} is invalid: use comma-separated sample counts, e.g. 1000,5000.") from None


GRACE_BEATS = 4  # heartbeats a running trial may miss before it is failed and retried


def open_storage(spec: str | None, home: Path, workers: int, heartbeat: float = SEARCH_HEARTBEAT_S):
    """The Optuna storage and a human-readable address for optuna-dashboard."""
    import optuna
    from optuna.storages import JournalStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    if spec and "://" in spec:
        if spec.startswith("sqlite") and workers > 1:
            raise UserError(
                "SQLite cannot serve parallel Optuna workers (no row locking): use the default journal file "
                "or a PostgreSQL URL with --workers > 1."
            )
        require_driver(spec, "the Optuna storage")
        interval = max(1, round(heartbeat))  # Optuna takes whole seconds
        try:
            with warnings.catch_warnings():  # Optuna still calls its heartbeat experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    spec,
                    engine_kwargs={"pool_pre_ping": True},
                    heartbeat_interval=interval,
                    grace_period=GRACE_BEATS * interval,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(),
                ), spec
        except Exception as e:  # drivers raise their own types
            raise UserError(f"cannot open the Optuna storage {spec}: {str(e).splitlines()[0]}") from None
    path = Path(spec) if spec else home / "optuna" / "sampling.journal"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a"):
            pass
        return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path) + ".lock"))), str(
            path
        )
    except OSError as e:
        raise UserError(f"cannot open the Optuna journal {path}: {e.strerror or e}.") from None
    except Exception as e:  # a corrupt journal raises while replaying
        raise UserError(f"cannot read the Optuna journal {path}: {str(e).splitlines()[0]}") from None


# --------------------------------------------------------------------------- model lookup
def resolve_model_run(tracker: Tracker, spec: str, profile: str) -> str:
    """A stage-2 run id, or STUDY:ROW (that row's stage-2 run at `profile`)."""
    from mqvq.studies.plan import run_spec

    spec = run_spec(tracker, spec, profile, "stage2")
    return resolve(tracker, spec, "stage2", need_run=True, why="searches need a stage-2 model").run_id


# --------------------------------------------------------------------------- the search
@dataclass
class SearchSpec:
    run_id: str
    metric: str
    num_samples: int
    trials: int
    sampler: str
    space: dict[str, Range]
    rungs: list[int]
    grid_points: int = 3
    seed: int = 0
    study_name: str = ""

    def __post_init__(self):
        if not self.study_name:
            self.study_name = f"sampling/{self.run_id}/{self.metric}/{self.num_samples}"


def plan_search(
    tracker: Tracker,
    run_id: str,
    *,
    trials: int,
    sampler: str = SAMPLERS[0],
    num_samples: int | None = None,
    metric: str | None = None,
    rungs: list[int] = (),
    ranges: dict[str, str | None] | None = None,
    grid_points: int = 3,
    seed: int = 0,
    study_name: str = "",
) -> SearchSpec:
    """The search a request asks for on stage-2 run `run_id`, its gaps filled from the run: the metric
    (default the run's eval backend's distance), the space (`default_space` for the model's shape,
    narrowed by `ranges`: {parameter: "LOW:HIGH" or one value}), the samples per trial and rungs
    (`trial_size`). Each value that does not apply to this model is refused in one sentence; the
    sampler and pruner are checked by `run_search`, which every search goes through."""
    from mqvq.metrics.registry import SAMPLE_METRICS, frechet
    from mqvq.models.checkpoint import read_checkpoint
    from mqvq.stages.generate import check_top_k
    from mqvq.stages.lookup import model_file

    if metric is not None and metric not in SAMPLE_METRICS:
        raise UserError(f"--metric {metric!r} is invalid: use {one_of(SAMPLE_METRICS)}.")
    ckpt = read_checkpoint(model_file(tracker, run_id))  # the search space needs only the model's shape
    shape, cfg = ckpt["shape"], ckpt["config"]
    grid_len = shape["grid"][0] * shape["grid"][1]
    guided = float(cfg["stage2"]["train"].get("cond_dropout", 0.0)) > 0
    space = default_space(shape["codebook_size"], grid_len, cfg["stage2"]["model"]["kind"] == "raster", guided)
    for name, value in (ranges or {}).items():
        if value is None:
            continue
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
        space[name] = parse_range(name, value)
        if name in ("top_k", "top_k_pos"):
            check_top_k(name, int(space[name].high), shape["codebook_size"], grid_len)
    ev = cfg.get("eval", {})
    metric = metric or frechet("fid", ev.get("backend", "inception"))
    n, rung_list = trial_size(num_samples, int(ev.get("num_samples", SEARCH_MAX_SAMPLES)), rungs)
    return SearchSpec(run_id, metric, n, trials, sampler, space, rung_list, grid_points, seed, study_name)


def _make_sampler(name: str, seed: int):
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name in ("random", "grid"):  # grid points are enqueued by the worker, never by Optuna's GridSampler
        return optuna.samplers.RandomSampler(seed=seed)
    raise UserError(f"--sampler {name!r} is invalid: use {one_of(SAMPLERS)}.")


def _distributions(space: dict[str, Range]) -> dict:
    from optuna.distributions import FloatDistribution, IntDistribution

    out = {}
    for name, r in space.items():
        if r.fixed:
            continue
        out[name] = (
            IntDistribution(int(r.low), int(r.high), log=True)
            if name in INT_PARAMS
            else FloatDistribution(r.low, r.high)
        )
    return out


def _check_study(study, spec: SearchSpec) -> None:
    want = {
        "model_run": spec.run_id,
        "metric": spec.metric,
        "num_samples": spec.num_samples,
        "sampler": spec.sampler,
        "space": {k: [v.low, v.high] for k, v in sorted(spec.space.items())},
        "rungs": spec.rungs,
    }
    have = study.user_attrs.get("mqvq")
    if have is None:
        study.set_user_attr("mqvq", want)
    elif have != json.loads(json.dumps(want)):
        diff = sorted(k for k in want if json.loads(json.dumps(want[k])) != have.get(k))
        raise UserError(
            f"Optuna study {spec.study_name} exists with a different {', '.join(diff)}: rerun with the same settings "
            f"or give this search another --study-name."
        )


def _uses_optuna_heartbeat(study) -> bool:
    from optuna.storages import RDBStorage

    return isinstance(
        getattr(study._storage, "_backend", study._storage), RDBStorage
    )  # create_study wraps it in a cache


def _reap_dead_trials(study, heartbeat: float) -> list[int]:
    """Fail the RUNNING trials of dead workers and queue their parameters again (the failed trial
    then counts for nothing, see `_retried`); their numbers."""
    import datetime

    import optuna
    from optuna.trial import TrialState

    grace = GRACE_BEATS * heartbeat
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not _uses_optuna_heartbeat(study):
        return [
            _fail_and_retry(study, t)
            for t in running
            if not lease_is_live(t.user_attrs.get("worker", ""), float(t.user_attrs.get("heartbeat", 0) or 0), grace)
        ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # RetryHeartbeatStaleTrialCallback re-queues each one
    still = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    gone = {t.number for t in running} - {t.number for t in still}
    reaped = sorted(gone & _retried(study.get_trials(deepcopy=False))) if gone else []
    # Optuna never calls a trial stale that has no heartbeat yet: a worker killed between `ask` and
    # its first beat (see `_next_trial`, which sets the `heartbeat` attribute only after that beat).
    now = datetime.datetime.now()
    return reaped + [
        _fail_and_retry(study, t)
        for t in still
        if "heartbeat" not in t.user_attrs
        and t.datetime_start is not None
        and (now - t.datetime_start).total_seconds() > grace
    ]


def _fail_and_retry(study, t) -> int:
    """Fail a dead worker's trial, queue its parameters again; its number."""
    import optuna
    from optuna.trial import TrialState

    optuna.trial.Trial(study, t._trial_id).set_user_attr("reaped", True)
    study.tell(t.number, state=TrialState.FAIL)
    study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
    return t.number


def _retried(trials) -> set[int]:
    """Numbers of the failed trials that were retried (a dead worker's): they count for nothing."""
    out = {t.number for t in trials if t.user_attrs.get("reaped")}
    for t in trials:  # Optuna's retry callback records the history on the new trial
        out |= set(t.system_attrs.get("retry_history", ()))
    return out


class TrialHeartbeat:
    """Proves from a background thread, every `interval` seconds, that this worker still runs its
    trial: Optuna's heartbeat on an RDB storage, a `heartbeat` user attribute on the journal."""

    def __init__(self, study, trial, interval: float):
        self.study, self.trial, self.interval = study, trial, interval
        self._ticker = Periodic(self.beat, interval, name="mqvq-trial-heartbeat")

    def beat(self) -> None:
        if _uses_optuna_heartbeat(self.study):
            self.study._storage.record_heartbeat(self.trial._trial_id)
        else:
            self.trial.set_user_attr("heartbeat", time.time())

    def __enter__(self) -> "TrialHeartbeat":
        self.beat()
        self._ticker.start()
        return self

    def __exit__(self, *exc) -> None:
        self._ticker.stop()


def _remaining(study, spec: SearchSpec) -> int:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = _retried(trials)
    used = sum(
        t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        or (t.state == TrialState.FAIL and t.number not in retried)
        for t in trials
    )
    left = max(0, spec.trials - used)
    if spec.sampler == "grid":
        searched = [grid_points(k, v, spec.grid_points) for k, v in spec.space.items() if not v.fixed]
        left = min(left, max(0, math.prod(len(g) for g in searched) - sum(t.number not in retried for t in trials)))
    return left


def _next_trial(study, spec: SearchSpec, lock_path: Path, worker: str, heartbeat: float):
    """(a trial, or None when `trials` are already done or running; the numbers of dead workers'
    trials failed on the way). Grid points are handed out once."""
    from optuna.trial import TrialState

    with file_lock(lock_path):
        reaped = _reap_dead_trials(study, heartbeat)
        trials = study.get_trials(deepcopy=False)
        retried = _retried(trials)
        live = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)]
        failed = [t for t in trials if t.state == TrialState.FAIL and t.number not in retried]
        if len(live) + len(failed) >= spec.trials:
            return None, reaped
        if spec.sampler == "grid":
            taken = {
                json.dumps(t.params or t.system_attrs.get("fixed_params", {}), sort_keys=True)
                for t in trials
                if t.number not in retried
            }  # queued trials hold their point in fixed_params
            searched = {k: v for k, v in spec.space.items() if not v.fixed}
            names = list(searched)
            for combo in itertools.product(*(grid_points(n, searched[n], spec.grid_points) for n in names)):
                params = dict(zip(names, combo))
                if json.dumps(params, sort_keys=True) not in taken:
                    study.enqueue_trial(params)
                    break
            else:
                return None, reaped  # every grid point is taken
        with (
            warnings.catch_warnings()
        ):  # Optuna expects heartbeats with optimize(); TrialHeartbeat records them for ask/tell
            warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
            trial = study.ask(_distributions(spec.space))
        trial.set_user_attr("worker", worker)
        if _uses_optuna_heartbeat(study):  # beat before the attribute: a trial with it is one Optuna can see go stale
            study._storage.record_heartbeat(trial._trial_id)
        trial.set_user_attr("heartbeat", time.time())  # live from the moment it is handed out
        return trial, reaped


def run_search(
    tracker: Tracker,
    spec: SearchSpec,
    *,
    storage: str | None = None,
    workers: int = 1,
    device: str | None = None,
    pruner: str = "median",
    progress: bool = True,
    log: Callable[[str], None] = print,
    worker_index: int = 0,
    heartbeat: float = SEARCH_HEARTBEAT_S,
) -> dict:
    """Run (or continue) the search until `spec.trials` trials exist in total; returns a summary."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if workers < 1:
        raise UserError(f"--workers {workers} must be at least 1.")
    if spec.sampler not in SAMPLERS:
        raise UserError(f"--sampler {spec.sampler!r} is invalid: use {one_of(SAMPLERS)}.")
    if pruner not in PRUNERS:
        raise UserError(f"--pruner {pruner!r} is invalid: use {one_of(PRUNERS)}.")
    if spec.trials < 1:
        raise UserError(f"--trials {spec.trials} must be at least 1.")
    if spec.num_samples < 2:
        raise UserError(f"--num-samples {spec.num_samples} must be at least 2.")
    for name, r in spec.space.items():
        check_range(name, r)
    if any(not 2 <= r <= spec.num_samples for r in spec.rungs):
        raise UserError(f"--rungs {spec.rungs} must lie between 2 and --num-samples {spec.num_samples}.")
    if not 0 < heartbeat <= 3600:
        raise UserError(f"--heartbeat {heartbeat:g} must be between 0 and 3600 seconds.")
    store, address = open_storage(storage, tracker.home, workers, heartbeat)
    pr = (
        optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
        if pruner == "median"
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        study_name=spec.study_name,
        storage=store,
        direction="minimize",
        load_if_exists=True,
        sampler=_make_sampler(spec.sampler, spec.seed * 1000 + worker_index),
        pruner=pr,
    )
    _check_study(study, spec)
    if done := len(
        study.get_trials(deepcopy=False)
    ):  # a continued search: a fresh seeded stream would redraw its first points
        study.sampler = _make_sampler(
            spec.sampler, int(np.random.SeedSequence([spec.seed, worker_index, done]).generate_state(1)[0])
        )

    if _remaining(study, spec) == 0:  # a finished search starts nothing (not even a model load)
        summary = search_summary(study, spec, address)
        _write_best(tracker, spec, study)
        return summary | {"evaluated_here": 0}
    children = []
    if workers > 1 and worker_index == 0:  # each worker's sampler gets its own seed; sampling seeds stay shared
        children = [
            _spawn_worker(spec, storage or address, device, pruner, tracker, i, heartbeat) for i in range(1, workers)
        ]
    try:
        evaluated = _worker_loop(tracker, study, spec, address, device, progress, log, heartbeat)
    finally:
        for c in children:
            c.wait()
    failed_children = [c for c in children if c.returncode != 0]
    summary = search_summary(study, spec, address)
    _write_best(tracker, spec, study)
    summary["evaluated_here"] = evaluated
    if failed_children:
        raise UserError(f"{len(failed_children)} search worker(s) failed: see their output above.")
    return summary


def _spawn_worker(
    spec: SearchSpec, storage: str, device, pruner, tracker, index: int, heartbeat: float
) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "mqvq",
        "search",
        "sampling",
        spec.run_id,
        "--trials",
        str(spec.trials),
        "--sampler",
        spec.sampler,
        "--storage",
        storage,
        "--num-samples",
        str(spec.num_samples),
        "--metric",
        spec.metric,
        "--workers",
        "1",
        "--study-name",
        spec.study_name,
        "--rungs",
        ",".join(map(str, spec.rungs)),
        "--grid-points",
        str(spec.grid_points),
        "--pruner",
        pruner,
        "--home",
        str(tracker.home),
        "--tracking-uri",
        tracker.uri,
        "--no-progress",
        "--seed",
        str(spec.seed),
        "--worker-index",
        str(index),
        "--heartbeat",
        str(heartbeat),
    ]
    for name, r in spec.space.items():
        cmd += [f"--{name.replace('_', '-')}", f"{r.low}:{r.high}"]
    if device:
        cmd += ["--device", device]
    return subprocess.Popen(cmd)


def _worker_loop(tracker, study, spec: SearchSpec, address: str, device, progress, log, heartbeat: float) -> int:
    from optuna.trial import TrialState

    from mqvq.runtime import setup

    d = setup(device)
    gen = load_generator(tracker, spec.run_id, d.device)
    cfg = gen.config
    backend, reference, ref_key, split = _reference(tracker, cfg, spec.metric, d.device)
    prompts = _test_captions(cfg) if gen.conditioning == "text" else None
    lock = tracker.home / "optuna" / (spec.study_name.replace("/", "_") + ".lock")
    worker = worker_id()
    evaluated = 0
    while True:
        trial, reaped = _next_trial(study, spec, lock, worker, heartbeat)
        for number in reaped:
            log(
                f"[yellow]trial {number} had stopped without finishing (its worker died): failed, its parameters queued again[/]"
            )
            dead = T.where(T.running(), kind=T.Kind.SEARCH_TRIAL, search=spec.study_name, trial=number)
            for run in tracker.find_runs(tracker.experiment_of(spec.run_id), dead):  # its MLflow run, left RUNNING too
                tracker.end_run(
                    run.info.run_id,
                    "KILLED",
                    "its worker stopped without finishing (no heartbeat): retried as a new trial",
                )
        if trial is None:
            return evaluated
        fixed = {k: (int(r.low) if k in INT_PARAMS else r.low) for k, r in spec.space.items() if r.fixed}
        values = {**fixed, **trial.params}
        params = dataclasses.replace(gen.sampling, **values)
        validate_sampling(params, "--")
        record = TrialRecord(
            spec.study_name, trial.number, spec.run_id, address, spec.metric, backend.name, ref_key, split
        )
        run_id = tracker.start_run(
            tracker.experiment_of(spec.run_id),
            f"trial-{trial.number:04d}",
            record.tags(),
            {k: v for k, v in values.items()},
            parent_run_id=spec.run_id,
        )
        log(f"trial {trial.number}: " + ", ".join(f"{k} {v}" for k, v in values.items()))
        try:
            with TrialHeartbeat(study, trial, heartbeat):
                value, state = _evaluate_trial(
                    tracker, run_id, trial, gen, params, backend, reference, spec, progress, prompts
                )
        except BaseException as e:
            if not _taken_back(study, trial):
                study.tell(trial, state=TrialState.FAIL)
            tracker.end_run(run_id, "FAILED", f"{type(e).__name__}: {e}")
            raise
        if finish_trial(study, trial, tracker, run_id, value, state, spec.metric, log):
            evaluated += 1


def _taken_back(study, trial) -> bool:
    """The trial is no longer running: another worker failed it (and queued its parameters again)
    while this one was stalled past the heartbeat grace."""
    from optuna.trial import TrialState

    return study._storage.get_trial(trial._trial_id).state != TrialState.RUNNING


def finish_trial(study, trial, tracker, run_id: str, value: float, state: str, metric: str, log) -> bool:
    """Tell Optuna the trial's result and end its MLflow run; False, telling nothing, when the trial
    was taken back from this worker meanwhile (Optuna refuses to be told twice: its retry owns the
    parameters now), with its MLflow run ended KILLED and the reason said."""
    from optuna.trial import TrialState

    if _taken_back(study, trial):
        reason = "failed by another worker while this one was stalled (no heartbeat): its result was dropped, its retry counts"
        tracker.end_run(run_id, "KILLED", reason)
        log(f"[yellow]trial {trial.number}: {reason}[/]")
        return False
    if state == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
        log(f"trial {trial.number}: pruned at {value:.4g}")
    else:
        study.tell(trial, value)
        log(f"trial {trial.number}: {metric} {value:.4g}")
    tracker.set_tags(run_id, {T.TRIAL_STATE: state})
    tracker.end_run(run_id, "FINISHED")
    return True


def _test_captions(cfg: dict) -> list[str]:
    from mqvq.data import build_dataset

    return build_dataset(from_dict(DataConfig, cfg["stage1"]["data"], "stage1.data."), "test").caption_list


def _reference(tracker, cfg: dict, metric: str, device):
    """The trial's feature backend and the reference its samples are measured against: the same
    rule as `mqvq eval` (`sample_reference`), so one metric name means one reference."""
    from mqvq.config import ExperimentConfig
    from mqvq.metrics.features import make_backend
    from mqvq.stages.reference import sample_reference

    typed = from_dict(ExperimentConfig, cfg)
    backend = make_backend(
        backend_of(metric), device, typed.stage1.data.resolution, typed.eval.inception_weights or None
    )
    stats, key, split = sample_reference(typed, backend, tracker.home, typed.eval.batch_size)
    return backend, stats, key, split


@torch.no_grad()
def _evaluate_trial(tracker, run_id, trial, gen, params, backend, reference, spec: SearchSpec, progress, prompts=None):
    """FD at each rung (statistics accumulate), then at N; pruned when the pruner says so. A text
    model samples with the test split's captions (`prompts`)."""
    from mqvq.images import sample_grid
    from mqvq.metrics.frechet import RunningStats, frechet_distance

    stats = RunningStats(backend.dim)
    rungs = sorted(set(spec.rungs) | {spec.num_samples})
    seen, first, fd = 0, None, math.nan
    for images, *_ in sample_images(gen, spec.num_samples, params, prompts=prompts, seed=spec.seed, progress=progress):
        if first is None:
            first = images
            tracker.log_image(
                run_id, sample_grid(images[:16], "samples of this trial's sampling settings"), "figures/samples.png"
            )
        x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        offset = 0  # feed in pieces so every rung is hit exactly
        while offset < len(x):
            nxt = next(r for r in rungs if r > seen)
            take = min(len(x) - offset, nxt - seen)
            stats.update(backend(x[offset : offset + take])[0])
            seen += take
            offset += take
            if seen == nxt:
                fd = frechet_distance(stats.finalize(), reference)
                tracker.log_metrics(run_id, {spec.metric: fd}, step=seen)
                if seen < spec.num_samples:
                    trial.report(fd, seen)
                    if trial.should_prune():
                        return fd, "pruned"
    tracker.log_metrics(run_id, {f"{spec.metric}_final": fd}, step=seen)
    return fd, "complete"


def _write_best(tracker: Tracker, spec: SearchSpec, study) -> None:
    """Record the search's best per metric and sample count, and make it the one `--sampling best`
    uses unless the settings in use came from more samples, from as many with a better value, or
    from another metric: a quick search never displaces a more reliable one."""
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return
    best = min(done, key=lambda t: t.value)
    fixed = {k: (int(r.low) if k in INT_PARAMS else r.low) for k, r in spec.space.items() if r.fixed}
    params = {**fixed, **best.params}
    old = tracker.get_run(spec.run_id).data.tags
    kinds = json.loads(old.get(T.SAMPLING_SEARCHED, "{}"))
    kind = f"{spec.metric}@{spec.num_samples}"
    if kind not in kinds or best.value < kinds[kind]["value"]:
        kinds[kind] = {"value": best.value, "params": params, "study": spec.study_name, "trial": best.number}
    tags = {T.SAMPLING_SEARCHED: json.dumps(kinds, sort_keys=True)}
    metric, n, value = (
        old.get(BEST_PREFIX + "metric"),
        int(old.get(BEST_PREFIX + "num_samples", 0)),
        float(old.get(BEST_PREFIX + "value", "inf")),
    )
    # values at other sample counts or of another metric are not comparable: more samples of the
    # same metric win; at the same count, the lower value; another metric never displaces silently
    if metric is None or (
        metric == spec.metric and (spec.num_samples > n or (spec.num_samples == n and best.value < value))
    ):
        tags |= {BEST_PREFIX + k: v for k, v in params.items()}
        tags |= {
            BEST_PREFIX + "metric": spec.metric,
            BEST_PREFIX + "value": best.value,
            BEST_PREFIX + "num_samples": spec.num_samples,
            BEST_PREFIX + "study": spec.study_name,
            BEST_PREFIX + "trial": best.number,
        }
    tracker.set_tags(spec.run_id, tags)


def best_in_use(tracker: Tracker, run_id: str) -> dict | None:
    """Which searched settings `--sampling best` uses now (metric, sample count, value, study)."""
    tags = tracker.get_run(run_id).data.tags
    if BEST_PREFIX + "metric" not in tags:
        return None
    return {
        "metric": tags[BEST_PREFIX + "metric"],
        "num_samples": int(tags[BEST_PREFIX + "num_samples"]),
        "value": float(tags[BEST_PREFIX + "value"]),
        "study": tags.get(BEST_PREFIX + "study", ""),
    }


def search_summary(study, spec: SearchSpec | None, address: str) -> dict:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {
        s.name.lower(): sum(t.state == s for t in trials) for s in TrialState if any(t.state == s for t in trials)
    }
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    out = {
        "study": study.study_name,
        "storage": address,
        "trials": len(trials),
        "states": counts,
        "dashboard": f"optuna-dashboard {address}",
    }
    if done:
        best = min(done, key=lambda t: t.value)
        out |= {"best_value": best.value, "best_params": best.params, "best_trial": best.number}
    if len(done) >= 2:
        try:
            import optuna

            out["importance"] = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError, ZeroDivisionError):
            pass  # too few distinct trials to rank parameters
    return out


def search_status(
    tracker: Tracker, spec: str, profile: str, storage: str | None, metric: str | None = None
) -> list[dict]:
    """Summaries of every search stored for a model run."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_id = resolve_model_run(tracker, spec, profile)
    store, address = open_storage(storage, tracker.home, 1)
    names = [
        s.study_name
        for s in optuna.study.get_all_study_summaries(store)
        if s.user_attrs.get("mqvq", {}).get("model_run") == run_id
        and (metric is None or s.user_attrs["mqvq"].get("metric") == metric)
    ]
    if not names:
        raise UserError(f"no sampling search for run {run_id} in {address}: run `mqvq search sampling {run_id}` first.")
    in_use = best_in_use(tracker, run_id)
    out = []
    for n in names:
        summary = search_summary(optuna.load_study(study_name=n, storage=store), None, address)
        summary["in_use"] = in_use is not None and in_use["study"] == n  # what --sampling best uses
        out.append(summary)
    return out
