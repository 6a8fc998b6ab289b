"""What a study's rows need: per row and stage, done / reusable / resumable / to run, with a time estimate.

MLflow layout: one experiment per study and profile (`<study>/<profile>`), one parent run per
(row, seed) tagged mqvq.kind = row, stage runs as its children. A stage-1 model is found by
content hash across the whole store, so a row reuses any finished stage-1 run with the same
resolved config and seed (Table 7's full model is Table 6's 50 % adaptive row).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from mqvq.config import ExperimentConfig, config_hash, identity
from mqvq.errors import UserError
from mqvq.files import file_digest
from mqvq.machine import cpu_name, may_have_gpu, torch_threads
from mqvq.metrics import metric_names, metric_stage
from mqvq.stages.lookup import checkpoint_path, model_file, stage2_hash
from mqvq.studies.lease import lease_is_live
from mqvq.studies.spec import StudyConfig, StudyRow, row_config, row_seeds, select_rows
from mqvq.tracking.store import Tracker

# guesses for a device with no finished runs of the profile yet
DEFAULT_SECONDS = {"smoke": {"stage1": 8, "stage2": 4, "eval": 5}, "cpu": {"stage1": 200, "stage2": 90, "eval": 60},
                   "mini": {"stage1": 120, "stage2": 90, "eval": 60}}


def study_experiment(study: str, profile: str) -> str:
    return f"{study}/{profile}"


def q(value: str) -> str:
    return "'" + str(value).replace("'", "\\'") + "'"


@dataclass
class StageState:
    state: str                 # done | reusable | resumable | run | after stage 1 | skip
    run_id: str | None = None
    detail: str = ""


@dataclass
class RowPlan:
    row: StudyRow
    seed: int
    cfg: ExperimentConfig
    parent: object | None                  # the row's MLflow parent run, if any
    status: str                            # finished | running | failed | missing
    stages: dict[str, StageState] = field(default_factory=dict)
    estimate_s: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def todo(self) -> bool:
        return any(s.state not in ("done", "skip") for s in self.stages.values())


def find_row_runs(tracker: Tracker, experiment: str, study: str, row: str, seed: int) -> list:
    return tracker.find_runs(experiment, f"tags.\"mqvq.kind\" = 'row' and tags.\"mqvq.study\" = {q(study)} and "
                                         f"tags.\"mqvq.row\" = {q(row)} and tags.\"mqvq.seed\" = '{seed}'",
                             order_by=["attributes.start_time ASC"])


class StoreView:
    """What planning a study reads from the store, fetched in three searches for the whole study
    (its row runs, every stage run, the experiments) instead of several per row and stage."""

    def __init__(self, tracker: Tracker, experiment: str, study: str):
        self.tracker = tracker
        self.names = {e.experiment_id: e.name for e in tracker.client.search_experiments()}
        self.experiment_id = next((i for i, n in self.names.items() if n == experiment), None)
        self.rows: dict[tuple[str, str], list] = {}
        if self.experiment_id is not None:
            for r in tracker.search_all([self.experiment_id], f"tags.\"mqvq.kind\" = 'row' and tags.\"mqvq.study\" = {q(study)}",
                                        ["attributes.start_time ASC"]):
                self.rows.setdefault((r.data.tags.get("mqvq.row"), r.data.tags.get("mqvq.seed")), []).append(r)
        self.stages: dict[tuple, list] = {}      # (stage, config hash, seed) -> runs, newest first
        self.readers: dict[str, list] = {}       # stage-1 run id -> the runs that name it
        for r in tracker.search_all(list(self.names), "tags.\"mqvq.stage\" LIKE 'stage%'"):
            t = r.data.tags
            self.stages.setdefault((t.get("mqvq.stage"), t.get("mqvq.config_hash"), t.get("mqvq.seed")), []).append(r)
            if t.get("mqvq.stage1_run"):
                self.readers.setdefault(t["mqvq.stage1_run"], []).append(r)

    def row_runs(self, row: str, seed: int) -> list:
        return self.rows.get((row, str(seed)), [])

    def stage_runs(self, stage: str, h: str, seed: int, finished: bool) -> list:
        return [r for r in self.stages.get((stage, h, str(seed)), []) if (r.info.status == "FINISHED") == finished]


def stage_state(view: StoreView, stage: str, h: str, seed: int, parent_id: str | None, linked: str | None = None) -> StageState:
    """`linked`: the stage run this row already uses (its `mqvq.<stage>_run` tag), so a run reused from
    another study's row counts as done here instead of being reused again on every `study run`."""
    done = view.stage_runs(stage, h, seed, finished=True)
    if done:
        mine = [r for r in done if (parent_id and r.data.tags.get("mlflow.parentRunId") == parent_id)
                or (linked and r.info.run_id == linked)]
        run = (mine or done)[0]
        return StageState("done" if mine else "reusable", run.info.run_id,
                          "" if mine else f"finished run in {view.names.get(run.info.experiment_id, '?')}")
    for run in view.stage_runs(stage, h, seed, finished=False):
        if view.experiment_id is not None and run.info.experiment_id == view.experiment_id:
            if checkpoint_path(view.tracker.home, run.info.run_id).is_file():
                return StageState("resumable", run.info.run_id, "from its last checkpoint")
    return StageState("run")


def expected_metrics(study: StudyConfig, cfg: ExperimentConfig, backend: str | None) -> list[str]:
    names = metric_names(backend or cfg.eval.backend)
    guided = cfg.stage2.train.cond_dropout > 0 and cfg.stage2.sampling.cfg_scale == 1.0 and cfg.eval.cfg_scale != 1.0
    out = []
    for m in study.metrics:
        if m in ("rfid", "fid"):
            out.append(names[m])
            if m == "fid" and guided:
                out.append(names[m] + "_cfg")
        elif m == "attr":
            out += ["attr_acc", "attr_acc_real", "attr_acc_chance"] + (["attr_acc_cfg"] if guided else [])
        elif m == "speed":
            out.append("speed_images_per_s")
        elif m in ("mask", "mask_detail"):  # only masked models on data with foreground masks have them
            if cfg.stage1.model.mask.type != "none" and cfg.stage1.data.name != "folder":
                out += ["mask_fg_precision", "fg_token_fraction", "mask_detail_ratio"]
                if m == "mask_detail":
                    out += ["mask_keep_border", "mask_keep_centre"]
                    if cfg.stage1.model.mask.type == "adaptive":
                        out += ["mask_score_corr_brightness"]
        elif m == "auroc":  # a score to rank: adaptive masks, on data with foreground masks
            if cfg.stage1.model.mask.type == "adaptive" and cfg.stage1.data.name != "folder":
                out.append("mask_auroc")
        elif m == "cost":  # measured by training, copied when present, never a reason to rerun a row
            continue
        elif m == "usage":
            out += ["usage", "usage_effective"]
        else:
            out.append(m)
    return list(dict.fromkeys(out))


def optional_metrics(study: StudyConfig) -> list[str]:
    """Metrics a row copies from its stage runs when they have them, without requiring them."""
    return ["time/step_seconds"] if "cost" in study.metrics else []


def plan_study(tracker: Tracker, study: StudyConfig, profile: str, seeds: list[int] | None = None,
               only: list[str] | None = None, backend: str | None = None, lease_timeout: float = 120.0,
               device: str | None = None, workers: int = 1, costs: Costs | None = None, estimate: bool = True) -> list[RowPlan]:
    """Per row and seed, each stage's state, from one view of the store. `estimate`: time the rows to
    run from the measured costs (`study status` has no use for them)."""
    experiment = study_experiment(study.name, profile)
    if estimate:
        costs = costs or measured_costs(tracker, profile, device, workers)
    view = StoreView(tracker, experiment, study.name)
    plans = []
    for row in select_rows(study, only):
        for seed in row_seeds(study, row, seeds):
            cfg = row_config(row, profile, seed)
            parents = view.row_runs(row.name, seed)
            parent = parents[0] if parents else None
            p = RowPlan(row, seed, cfg, parent, _row_status(parent, lease_timeout))
            if parent is not None:
                p.metrics = dict(parent.data.metrics)
            pid = parent.info.run_id if parent else None
            links = parent.data.tags if parent else {}
            s1 = stage_state(view, "stage1", config_hash(identity(cfg.stage1)), seed, pid, links.get("mqvq.stage1_run"))
            p.stages["stage1"] = s1
            if not row.stage2:
                p.stages["stage2"] = StageState("skip")
            elif s1.state in ("done", "reusable") and (digest := stage1_digest(view, s1.run_id)):
                p.stages["stage2"] = stage_state(view, "stage2", stage2_hash(cfg, digest), seed, pid, links.get("mqvq.stage2_run"))
            elif s1.state in ("done", "reusable"):
                p.stages["stage2"] = StageState("run", None, "the stage-1 checkpoint is missing")
            else:
                p.stages["stage2"] = StageState("after stage 1")
            want = expected_metrics(study, cfg, backend)
            if study.search.trials and row.stage2:
                want.append(metric_names(backend or cfg.eval.backend)["fid"] + "_best")
            if not row.stage2:
                want = [m for m in want if metric_stage(m) != "stage2"]
            missing = [m for m in want if m not in p.metrics]
            p.stages["eval"] = StageState("done" if parent is not None and not missing else "run", None,
                                          ", ".join(missing) if missing and parent is not None else "")
            if p.stages["eval"].state == "done" and p.status != "finished":
                p.stages["eval"] = StageState("run")
            p.estimate_s = _estimate(p, costs, profile) if estimate else None
            plans.append(p)
    return plans


def stage1_digest(view: StoreView, run_id: str) -> str | None:
    """The stage-1 model's digest (stage 2's identity depends on it): from its file, or, in a store
    fetched without checkpoints, as recorded by the stage-2 runs trained on it."""
    try:
        return file_digest(model_file(view.tracker, run_id))
    except UserError:
        return next((r.data.tags["mqvq.stage1_checkpoint"] for r in view.readers.get(run_id, [])
                     if r.data.tags.get("mqvq.stage1_checkpoint")), None)


def _row_status(parent, lease_timeout: float) -> str:
    if parent is None:
        return "missing"
    tags = parent.data.tags
    status = tags.get("mqvq.status", "missing")
    if status == "running":
        live = lease_is_live(tags.get("mqvq.lease", ""), float(tags.get("mqvq.heartbeat", "0") or 0), lease_timeout)
        return "running" if live else "missing"
    return status if status in ("finished", "failed") else "missing"


@dataclass
class Costs:
    """Measured costs on one device: seconds per training step by stage (exact config first, then
    the experiment, then any run of the stage), the per-run overhead, and evaluation seconds."""
    device: str
    runs: int = 0
    step_s: dict[tuple, float] = field(default_factory=dict)     # (stage, key) -> median seconds per step
    overhead_s: dict[str, float] = field(default_factory=dict)   # stage -> median (duration - steps * step_s)
    eval_s: float | None = None

    def stage_seconds(self, stage: str, cfg: ExperimentConfig) -> float | None:
        section = cfg.stage1 if stage == "stage1" else cfg.stage2
        for key in (config_hash(identity(section)), cfg.name, "*"):
            if (stage, key) in self.step_s:
                return section.train.steps * self.step_s[(stage, key)] + self.overhead_s.get(stage, 0.0)
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
    threads = str(max(1, (os.cpu_count() or 1) // workers) if workers > 1 else torch_threads(tracker.home)) if on_cpu else None
    costs = Costs(name + (f", {threads} torch thread{'s' * (threads != '1')} per worker" if threads else ""))
    runs = tracker.find_runs_everywhere(f"tags.\"mqvq.profile\" = {q(profile)} and tags.\"mqvq.device_name\" = {q(name)} "
                                        f"and attributes.status = 'FINISHED'")
    per: dict[tuple, list[float]] = {}
    over: dict[str, list[float]] = {}
    evals = []
    for r in runs:
        t, m = r.data.tags, r.data.metrics
        stage, sec = t.get("mqvq.stage"), m.get("time/step_seconds")
        if stage not in ("stage1", "stage2") or sec is None or (threads and t.get("mqvq.torch_threads") not in (None, threads)):
            continue
        costs.runs += 1
        for key in (t.get("mqvq.config_hash"), t.get("mqvq.experiment"), "*"):
            per.setdefault((stage, key), []).append(sec)
        steps = float(r.data.params.get(f"{stage}.train.steps", 0) or 0)
        if r.info.end_time and steps:  # set-up, checkpoints, the final validation, and stage 2's tokenizing
            wall = (r.info.end_time - r.info.start_time) / 1000 + m.get("time/tokenize_seconds", 0.0)
            over.setdefault(stage, []).append(max(0.0, wall - steps * sec))
        if t.get("mqvq.eval.seconds"):
            evals.append(float(t["mqvq.eval.seconds"]))
    costs.step_s = {k: statistics.median(v) for k, v in per.items()}
    costs.overhead_s = {k: statistics.median(v) for k, v in over.items()}
    costs.eval_s = statistics.median(evals) if evals else None
    return costs


def _estimate(p: RowPlan, costs: Costs, profile: str) -> float | None:
    default = DEFAULT_SECONDS.get(profile, {})
    total = 0.0
    for stage, st in p.stages.items():
        if st.state in ("done", "reusable", "skip"):
            continue
        if stage == "eval":
            sec = costs.eval_s if costs.eval_s is not None else default.get("eval")
            # a row evaluates its stage-1 run and, unless it skips stage 2, its stage-2 run
            sec = None if sec is None else sec * (1 if p.stages["stage2"].state == "skip" else 2)
        else:
            sec = costs.stage_seconds(stage, p.cfg)
            if sec is None:
                sec = default.get(stage)
        if sec is None:
            return None
        total += sec * (0.5 if st.state == "resumable" else 1.0)
    return total
