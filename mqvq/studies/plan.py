"""What a study's rows need: per row and stage, done / reusable / resumable / to run, with a time estimate.

MLflow layout: one experiment per study and profile (`<study>/<profile>`), one parent run per
(row, seed) (a `RowRecord`), stage runs (`StageRecord`s) as its children. A stage-1 model is found by
content hash across the whole store, so a row reuses any finished stage-1 run with the same
resolved config and seed (Table 7's full model is Table 6's 50 % adaptive row).
"""

from __future__ import annotations

import enum
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from mqvq.config import ExperimentConfig, config_hash, identity
from mqvq.errors import UserError
from mqvq.files import file_digest
from mqvq.machine import cpu_name, may_have_gpu, torch_threads
from mqvq.metrics.registry import (
    REGISTRY,
    STEP_SECONDS,
    TOKENIZE_SECONDS,
    best,
    frechet,
    guided,
    metric_stage,
    named_step_seconds,
)
from mqvq.stages.lookup import checkpoint_path, model_file, stage2_hash
from mqvq.studies.spec import StudyConfig, StudyRow, row_config, row_seeds, select_rows
from mqvq.tracking import tags as T
from mqvq.tracking.records import LEASE_TIMEOUT_S, RowRecord, StageRecord, lease_is_live
from mqvq.tracking.store import Tracker

# guesses for a device with no finished runs of the profile yet
DEFAULT_SECONDS = {
    "smoke": {"stage1": 8, "stage2": 4, "eval": 5},
    "cpu": {"stage1": 200, "stage2": 90, "eval": 60},
    "mini": {"stage1": 120, "stage2": 90, "eval": 60},
}


def study_experiment(study: str, profile: str) -> str:
    return f"{study}/{profile}"


class Step(str, enum.Enum):
    """What a stage of a row needs."""

    DONE = "done"  # this row's own finished run
    REUSABLE = "reusable"  # a finished run of the same content hash elsewhere in the store
    RESUMABLE = "resumable"  # an unfinished run of this study with a checkpoint
    RUN = "run"
    AFTER_STAGE1 = "after stage 1"  # stage 2's identity needs the stage-1 checkpoint, not trained yet
    BUSY = "running elsewhere"  # an unfinished run that a live process is training (a fresh heartbeat)
    SKIP = "skip"  # a stage-1-only row

    def __str__(self) -> str:
        return self.value

    @property
    def has_model(self) -> bool:
        return self in (Step.DONE, Step.REUSABLE)


@dataclass
class StageState:
    state: Step
    run_id: str | None = None
    detail: str = ""


@dataclass
class RowPlan:
    row: StudyRow
    seed: int
    cfg: ExperimentConfig
    parent: RowRecord | None  # the row's MLflow parent run, if any
    status: str  # finished | running | failed | missing
    stages: dict[str, StageState] = field(default_factory=dict)
    estimate_s: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    view: StoreView | None = field(default=None, repr=False)  # what it was planned from

    @property
    def todo(self) -> bool:
        return any(s.state not in (Step.DONE, Step.SKIP) for s in self.stages.values())


def find_row_runs(tracker: Tracker, experiment: str, study: str, row: str, seed: int) -> list[RowRecord]:
    """The row's parent runs, oldest first (more than one only while racing workers fold theirs)."""
    runs = tracker.find_runs(
        experiment, T.where(kind=T.Kind.ROW, study=study, row=row, seed=seed), order_by=["attributes.start_time ASC"]
    )
    return [RowRecord.of(r) for r in runs]


def row_stage_run(tracker: Tracker, study_name: str, row: str, profile: str, stage: str | None) -> str:
    """The `stage` run of a study row (STUDY:ROW on the command line) at `profile`, first seed; with
    `stage` None, its stage-2 run when the row has one, else its stage-1 run."""
    from mqvq.studies.spec import load_study

    study = load_study(study_name)
    select_rows(study, [row])
    parents = find_row_runs(tracker, study_experiment(study.name, profile), study.name, row, study.seeds[0])
    run_id = None
    if parents:
        run_id = parents[0].stage1_run if stage == "stage1" else parents[0].stage2_run
        run_id = run_id or (parents[0].stage1_run if stage is None else None)
    if not run_id:
        raise UserError(
            f"row {row} of {study.name} (profile {profile}) has no {stage or 'finished'} model yet: run "
            f"`mqvq study run {study.name} --profile {profile} --only {row}` first."
        )
    return run_id


STUDY_ROW = re.compile(r"[A-Za-z0-9_.-]+:[A-Za-z0-9_.-]+")  # a study row on the command line, STUDY:ROW


def run_spec(tracker: Tracker, spec: str, profile: str, stage: str | None) -> str:
    """What a command was given as a model: STUDY:ROW becomes that row's run id (`row_stage_run`), any
    other spec (a run id, a logged model, a checkpoint file) is returned as it is."""
    if STUDY_ROW.fullmatch(spec) and not Path(spec).exists():
        return row_stage_run(tracker, *spec.split(":", 1), profile, stage)
    return spec


class StoreView:
    """What planning reads from the store. `StoreView.whole_study` fetches it in three searches for the
    whole study (its row runs, every stage run, the experiments) instead of several per row and
    stage; `StoreView.one_row` reads one row's runs now and each stage's runs when first asked for,
    which is what the runner does under a row's lease, when another worker may have changed them."""

    def __init__(self, tracker: Tracker, experiment: str, study: str, row: tuple[str, int] | None = None):
        self.tracker = tracker
        self.names = tracker.experiment_names()
        self.experiment_id = next((i for i, n in self.names.items() if n == experiment), None)
        self.rows: dict[tuple[str, int], list[RowRecord]] = {}
        self.stages: dict[tuple, list[StageRecord]] = {}  # (stage, config hash, seed) -> runs, newest first
        self.readers: dict[str, list[StageRecord]] = {}  # stage-1 run id -> the runs that name it
        self.complete = row is None  # every stage run is in `stages`
        if self.experiment_id is not None:
            where = T.where(kind=T.Kind.ROW, study=study, **({"row": row[0], "seed": row[1]} if row else {}))
            for r in tracker.search_all([self.experiment_id], where, ["attributes.start_time ASC"]):
                rec = RowRecord.of(r)
                self.rows.setdefault((rec.row, rec.seed), []).append(rec)
        if self.complete:
            for r in tracker.search_all(list(self.names), T.any_stage()):
                self._add(StageRecord.of(r))

    @classmethod
    def whole_study(cls, tracker: Tracker, experiment: str, study: str) -> "StoreView":
        return cls(tracker, experiment, study)

    @classmethod
    def one_row(cls, tracker: Tracker, experiment: str, study: str, row: str, seed: int) -> "StoreView":
        return cls(tracker, experiment, study, (row, seed))

    def _add(self, rec: StageRecord) -> None:
        self.stages.setdefault((rec.stage, rec.config_hash, rec.seed), []).append(rec)
        if rec.stage1_run:
            self.readers.setdefault(rec.stage1_run, []).append(rec)

    def row_runs(self, row: str, seed: int) -> list[RowRecord]:
        return self.rows.get((row, seed), [])

    def stage_runs(self, stage: str, h: str, seed: int, finished: bool) -> list[StageRecord]:
        key = (stage, h, seed)
        if not self.complete and key not in self.stages:
            self.stages[key] = [
                StageRecord.of(r)
                for r in self.tracker.search_all(list(self.names), T.where(stage=stage, config_hash=h, seed=seed))
            ]
        return [r for r in self.stages.get(key, []) if r.finished == finished]

    def runs_reading(self, stage1_run: str) -> list[StageRecord]:
        if not self.complete and stage1_run not in self.readers:
            self.readers[stage1_run] = [
                StageRecord.of(r) for r in self.tracker.search_all(list(self.names), T.where(stage1_run=stage1_run))
            ]
        return self.readers.get(stage1_run, [])


def stage_state(
    view: StoreView, stage: str, h: str, seed: int, parent_id: str | None, linked: str | None = None
) -> StageState:
    """`linked`: the stage run this row already uses (its record's stage run), so a run reused from
    another study's row counts as done here instead of being reused again on every `study run`."""
    done = view.stage_runs(stage, h, seed, finished=True)
    if done:
        mine = [r for r in done if (parent_id and r.parent_run_id == parent_id) or (linked and r.run_id == linked)]
        run = (mine or done)[0]
        return StageState(
            Step.DONE if mine else Step.REUSABLE,
            run.run_id,
            "" if mine else f"finished run in {view.names.get(run.experiment_id, '?')}",
        )
    for run in view.stage_runs(stage, h, seed, finished=False):
        if view.experiment_id is not None and run.experiment_id == view.experiment_id:
            if run.mlflow_status == "RUNNING" and lease_is_live(run.trainer, run.heartbeat):
                return StageState(
                    Step.BUSY, run.run_id, "a live process is training it"
                )  # resuming it would make two writers
            if checkpoint_path(view.tracker.home, run.run_id).is_file():
                return StageState(Step.RESUMABLE, run.run_id, "from its last checkpoint")
    return StageState(Step.RUN)


def searched_metric(cfg: ExperimentConfig, backend: str | None) -> str:
    """The sample metric a sampling search minimises for this row (FID on Inception features, else FD-VGG16)."""
    return frechet("fid", backend or cfg.eval.backend)


def expected_metrics(study: StudyConfig, cfg: ExperimentConfig, backend: str | None) -> list[str]:
    """The logged metric names a finished row of `study` has (registry names, under the row's backend)."""
    backend = backend or cfg.eval.backend
    twin = cfg.stage2.train.cond_dropout > 0 and cfg.stage2.sampling.cfg_scale == 1.0 and cfg.eval.cfg_scale != 1.0
    masked = cfg.stage1.model.mask.type != "none" and cfg.stage1.data.name != "folder"  # data with foreground masks
    name = lambda key: REGISTRY[key].name(backend)  # noqa: E731
    out = []
    for m in study.metrics:
        if m in ("rfid", "fid"):
            out.append(name(m))
            if m == "fid" and twin:
                out.append(guided(name(m)))
        elif m == "attr":
            out += [name("attr"), name("attr_real"), name("attr_chance")] + ([name("attr_cfg")] if twin else [])
        elif m in ("mask", "mask_detail"):  # only masked models on data with foreground masks have them
            if masked:
                out += [name("mask"), name("fg_fraction"), name("detail")]
                if m == "mask_detail":
                    out += [name("keep_border"), name("keep_centre")]
                    if cfg.stage1.model.mask.type == "adaptive":
                        out += [name("score_brightness")]
        elif m in ("auroc", "sauc"):  # a score to rank: adaptive masks, on data with foreground masks
            if masked and cfg.stage1.model.mask.type == "adaptive":
                out.append(name(m))
        elif m in ("damage_fg", "damage_bg"):  # any masked model's own decoder, on data with foreground masks
            if masked:
                out.append(name(m))
        elif m == "cost":  # measured by training, copied when present, never a reason to rerun a row
            continue
        elif m == "usage":
            out += [name("usage"), name("usage_effective")]
        else:
            out.append(name(m))
    return list(dict.fromkeys(out))


def optional_metrics(study: StudyConfig) -> list[str]:
    """Metrics a row copies from its stage runs when they have them, without requiring them."""
    return [REGISTRY["cost"].name()] if "cost" in study.metrics else []


def plan_study(
    tracker: Tracker,
    study: StudyConfig,
    profile: str,
    seeds: list[int] | None = None,
    only: list[str] | None = None,
    backend: str | None = None,
    lease_timeout: float = LEASE_TIMEOUT_S,
    device: str | None = None,
    workers: int = 1,
    costs: Costs | None = None,
    estimate: bool = True,
) -> list[RowPlan]:
    """Per row and seed, each stage's state, from one view of the store. `estimate`: time the rows to
    run from the measured costs (`study status` has no use for them)."""
    if estimate:
        costs = costs or measured_costs(tracker, profile, device, workers)
    view = StoreView.whole_study(tracker, study_experiment(study.name, profile), study.name)
    plans = []
    for row in select_rows(study, only):
        for seed in row_seeds(study, row, seeds):
            p = plan_row(view, study, row, seed, profile, backend, lease_timeout)
            p.estimate_s = _estimate(p, costs, profile) if estimate else None
            plans.append(p)
    return plans


def replan_row(
    tracker: Tracker,
    study: StudyConfig,
    p: "RowPlan",
    profile: str,
    backend: str | None,
    lease_timeout: float = LEASE_TIMEOUT_S,
) -> "RowPlan":
    """The row planned again from the store as it is now (the runner, once it holds the row's lease:
    another worker may have finished it, or trained a model it can reuse)."""
    view = StoreView.one_row(tracker, study_experiment(study.name, profile), study.name, p.row.name, p.seed)
    return plan_row(view, study, p.row, p.seed, profile, backend, lease_timeout)


def plan_row(
    view: StoreView,
    study: StudyConfig,
    row: StudyRow,
    seed: int,
    profile: str,
    backend: str | None,
    lease_timeout: float = LEASE_TIMEOUT_S,
) -> "RowPlan":
    """One row and seed: its parent run, each stage's state and the metrics it still lacks."""
    cfg = row_config(row, profile, seed)
    parents = view.row_runs(row.name, seed)
    parent = parents[0] if parents else None
    p = RowPlan(row, seed, cfg, parent, parent.state(lease_timeout) if parent else T.Status.MISSING.value, view=view)
    if parent is not None:
        p.metrics = dict(parent.metrics)
    pid = parent.run_id if parent else None
    s1 = stage_state(view, "stage1", config_hash(identity(cfg.stage1)), seed, pid, parent and parent.stage1_run)
    p.stages["stage1"] = s1
    if not row.stage2:
        p.stages["stage2"] = StageState(Step.SKIP)
    elif s1.state.has_model:
        p.stages["stage2"] = stage2_state(p, s1.run_id)
    else:
        p.stages["stage2"] = StageState(Step.AFTER_STAGE1)
    want = expected_metrics(study, cfg, backend)
    if study.search.trials and row.stage2:
        want.append(best(searched_metric(cfg, backend)))
    if not row.stage2:
        want = [m for m in want if metric_stage(m) != "stage2"]
    missing = [m for m in want if m not in p.metrics]
    p.stages["eval"] = StageState(
        Step.DONE if parent is not None and not missing else Step.RUN,
        None,
        ", ".join(missing) if missing and parent is not None else "",
    )
    if p.stages["eval"].state == Step.DONE and p.status != T.Status.FINISHED:
        p.stages["eval"] = StageState(Step.RUN)
    return p


def stage2_state(p: "RowPlan", stage1_run: str) -> StageState:
    """Stage 2's state once its stage-1 model exists: stage 2's identity includes that model's digest
    (also what the runner asks right after training stage 1)."""
    digest = stage1_digest(p.view, stage1_run)
    if digest is None:
        return StageState(Step.RUN, None, "the stage-1 checkpoint is missing")
    parent = p.parent
    return stage_state(
        p.view, "stage2", stage2_hash(p.cfg, digest), p.seed, parent and parent.run_id, parent and parent.stage2_run
    )


def stage1_digest(view: StoreView, run_id: str) -> str | None:
    """The stage-1 model's digest (stage 2's identity depends on it): from its file, or, in a store
    fetched without checkpoints, as recorded by the stage-2 runs trained on it."""
    try:
        return file_digest(model_file(view.tracker, run_id))
    except UserError:
        return next((r.stage1_checkpoint for r in view.runs_reading(run_id) if r.stage1_checkpoint), None)


@dataclass
class Costs:
    """Measured costs on one device: seconds per training step by stage (exact config first, then
    the experiment, then any run of the stage), the per-run overhead, and evaluation seconds.
    A stage-1 step time borrowed from other configs is scaled by image area: a 48 px row costs about
    2.25 times a 32 px row's step, and without the scale `study plan` promised a third of the time."""

    device: str
    runs: int = 0
    step_s: dict[tuple, float] = field(default_factory=dict)  # (stage, key) -> median seconds per step
    pixels: dict[tuple, float] = field(
        default_factory=dict
    )  # (stage, key) -> median image area of those runs (stage 1)
    overhead_s: dict[str, float] = field(default_factory=dict)  # stage -> median (duration - steps * step_s)
    eval_s: float | None = None

    def stage_seconds(self, stage: str, cfg: ExperimentConfig) -> float | None:
        section = cfg.stage1 if stage == "stage1" else cfg.stage2
        exact = config_hash(identity(section))
        for key in (exact, cfg.name, "*"):
            if (stage, key) in self.step_s:
                step = self.step_s[(stage, key)]
                if key != exact and (stage, key) in self.pixels:
                    step *= cfg.stage1.data.resolution**2 / self.pixels[(stage, key)]
                return section.train.steps * step + self.overhead_s.get(stage, 0.0)
        return None


def measured_costs(tracker: Tracker, profile: str, device: str | None = None, workers: int = 1) -> Costs:
    """What finished runs of `profile` on this device measured (same device name; on a CPU, the same
    torch thread count as each of `workers` workers gets): one query for all stage runs, none per row."""
    import os

    if device in (None, "cpu") and (device == "cpu" or not may_have_gpu()):  # no torch import: start in a second
        name, on_cpu = cpu_name(), True
    else:
        import torch

        from mqvq.timing import device_name

        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        name, on_cpu = device_name(dev), dev.type == "cpu"
    threads = (
        str(max(1, (os.cpu_count() or 1) // workers) if workers > 1 else torch_threads(tracker.home))
        if on_cpu
        else None
    )
    costs = Costs(name + (f", {threads} torch thread{'s' * (threads != '1')} per worker" if threads else ""))
    runs = tracker.find_runs_everywhere(T.where(T.finished(), profile=profile, device_name=name))
    per: dict[tuple, list[float]] = {}
    area: dict[tuple, list[float]] = {}
    over: dict[str, list[float]] = {}
    evals = []
    for r in map(StageRecord.of, runs):
        stage = r.stage
        sec = named_step_seconds(r.metrics, stage).get(STEP_SECONDS.get(stage, ""))
        if stage not in ("stage1", "stage2") or sec is None or (threads and r.torch_threads not in (None, threads)):
            continue
        costs.runs += 1
        resolution = r.params.get("stage1.data.resolution") if stage == "stage1" else None
        for key in (r.config_hash, r.experiment, "*"):
            per.setdefault((stage, key), []).append(sec)
            if resolution:
                area.setdefault((stage, key), []).append(float(resolution) ** 2)
        steps = float(r.params.get(f"{stage}.train.steps", 0) or 0)
        # set-up, checkpoints, the final validation, and stage 2's tokenizing; not from a resumed run, whose
        # wall time may include hours queued between a preemption and its requeue
        if r.end_time and steps and not r.resumed:
            wall = (r.end_time - r.start_time) / 1000 + r.metrics.get(TOKENIZE_SECONDS, 0.0)
            over.setdefault(stage, []).append(max(0.0, wall - steps * sec))
        if r.eval_seconds is not None:
            evals.append(r.eval_seconds)
    costs.step_s = {k: statistics.median(v) for k, v in per.items()}
    costs.pixels = {k: statistics.median(v) for k, v in area.items() if len(v) == len(per[k])}
    costs.overhead_s = {k: statistics.median(v) for k, v in over.items()}
    costs.eval_s = statistics.median(evals) if evals else None
    return costs


def _estimate(p: RowPlan, costs: Costs, profile: str) -> float | None:
    default = DEFAULT_SECONDS.get(profile, {})
    total = 0.0
    for stage, st in p.stages.items():
        if st.state in (Step.DONE, Step.REUSABLE, Step.SKIP):
            continue
        if stage == "eval":
            sec = costs.eval_s if costs.eval_s is not None else default.get("eval")
            # a row evaluates its stage-1 run and, unless it skips stage 2, its stage-2 run
            sec = None if sec is None else sec * (1 if p.stages["stage2"].state == Step.SKIP else 2)
        else:
            sec = costs.stage_seconds(stage, p.cfg)
            if sec is None:
                sec = default.get(stage)
        if sec is None:
            return None
        total += sec * (0.5 if st.state == Step.RESUMABLE else 1.0)
    return total
