"""Which model does a user mean? `resolve` is the one answer, for every command: a checkpoint path,
an MLflow run id or logged model (`m-...`, `models:/...`; a study row, STUDY:ROW, is turned into its
run id by the studies first);
`find_stage1` finds 'the finished stage-1 run of this config'."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mqvq.config import ExperimentConfig, config_hash, from_dict, get_dotted, identity, to_dict
from mqvq.errors import UserError
from mqvq.tracking import tags as T
from mqvq.tracking.records import stage_of
from mqvq.tracking.store import Tracker

# stage-1 fields the stage-2 tokens depend on: a checkpoint differing in any of them is a mistake (the
# selector and its scorer choose the kept tokens: a stage-2 run must not record one it did not read)
TOKEN_FIELDS = (
    "model.mask.type",
    "model.mask.ratio",
    "model.mask.selector",
    "model.mask.scorer",
    "model.quantizer.codebook_size",
    "model.downsample",
    "data.resolution",
)


@dataclass(frozen=True)
class ModelRef:
    checkpoint: Path
    run_id: str | None
    config: dict  # the experiment config the checkpoint was trained with, as stored
    stage: str = ""  # stage1 | stage2

    @property
    def experiment(self) -> ExperimentConfig:
        """The stored config, typed (fields added since it was written take their defaults)."""
        return from_dict(ExperimentConfig, self.config)


def checkpoint_path(home: Path, run_id: str) -> Path:
    """A run's resumable checkpoint (written while it trains)."""
    return home / "checkpoints" / run_id / "last.pt"


def stage2_hash(cfg: ExperimentConfig, stage1_digest: str) -> str:
    """Identity of a stage-2 run: its own config plus the exact stage-1 checkpoint it reads."""
    return config_hash(
        {"stage2": identity(cfg.stage2), "stage1_checkpoint": stage1_digest, "data": identity(cfg.stage1.data)}
    )


MODEL_FILE = "model.pt"  # a finished run's final weights + config: what tokenizing, sampling and evaluation read


def model_file(tracker: Tracker, run_id: str) -> Path:
    """A finished run's final weights: its logged model's file (in place, or downloaded into the
    home's checkpoints folder); for runs trained before logged models, the local working copy, else
    the run's `checkpoints/model.pt` artifact."""
    local = tracker.home / "checkpoints" / run_id / MODEL_FILE
    if (model_id := tracker.model_of(run_id)) is not None:
        return tracker.model_file(model_id, MODEL_FILE, local.parent)
    if local.is_file():
        return local
    try:
        return tracker.download_artifact(run_id, "checkpoints/model.pt", local.parent)
    except Exception:  # MLflow raises several types for missing artifacts
        raise UserError(f"run {run_id} has no model checkpoint (checkpoints/model.pt): did it finish?") from None


STAGES = (T.Stage.STAGE1.value, T.Stage.STAGE2.value)
LOGGED_MODEL_ID = re.compile(r"m-[0-9a-f]{32}")


def resolve(
    tracker: Tracker, spec: str, stage: str | None = None, *, need_run: bool = False, why: str = ""
) -> ModelRef:
    """The finished model a user names by a checkpoint path or an MLflow run id. `stage`: the stage
    it must be (None: either); `need_run`: the caller logs to the run, so a checkpoint must name a
    finished run of this store; `why`: what the caller needs it for, said when the stage is wrong."""
    from mqvq.models.checkpoint import read_checkpoint  # torch: not for the commands that only plan

    if spec.startswith("models:/") or LOGGED_MODEL_ID.fullmatch(spec):  # an MLflow logged model: its run
        spec = tracker.model_source_run(spec)
    path = Path(spec)
    if path.suffix == ".pt" or path.is_file():
        if not path.is_file():
            raise UserError(f"checkpoint {path} does not exist.")
        ckpt = read_checkpoint(path)
        if stage is not None and ckpt.get("stage") != stage:
            raise UserError(f"{path} is a {ckpt.get('stage')} checkpoint, not {stage}.")
        if not need_run:
            return ModelRef(path, ckpt.get("run_id"), ckpt["config"], ckpt.get("stage", ""))
        if not ckpt.get("run_id"):
            raise UserError(f"{spec} does not record the run it belongs to; pass the run id.")
        spec = ckpt["run_id"]
    run = tracker.find_run(spec)
    if run is None:
        raise UserError(f"{spec!r} is neither a checkpoint file nor an MLflow run id in {tracker.uri}.")
    found = stage_of(run)
    if found not in STAGES or (stage is not None and found != stage):
        if found:
            raise UserError(f"run {spec} is a {found} run" + (f": {why}." if why else f", not {stage}."))
        raise UserError(
            f"run {spec} is not an mqvq {stage or 'stage-1 or stage-2'} run" + (f": {why}." if why else ".")
        )
    if run.info.status != "FINISHED":
        raise UserError(f"{found} run {spec} is {run.info.status.lower()}, not finished: resume it first.")
    path = model_file(tracker, spec)
    return ModelRef(path, spec, read_checkpoint(path)["config"], found)


def find_stage1(tracker: Tracker, cfg: ExperimentConfig, experiment: str) -> ModelRef:
    """The latest finished stage-1 run of exactly this experiment's stage-1 config and seed: from the
    experiment's own MLflow experiment first, else from any (a study's rows train in the study's)."""
    h = config_hash(identity(cfg.stage1))
    query = T.where(T.finished(), stage=T.Stage.STAGE1, config_hash=h, seed=cfg.seed)
    runs = tracker.find_runs(experiment, query) or tracker.find_runs_everywhere(query)
    if not runs:
        raise UserError(
            f"no finished stage-1 run of {cfg.name} (profile {cfg.profile}, seed {cfg.seed}) in {tracker.uri}: "
            f"train one with `mqvq train stage1 {cfg.name} --profile {cfg.profile}` or pass --stage1 RUN_OR_CHECKPOINT."
        )
    return resolve(tracker, runs[0].info.run_id, "stage1")


def check_compatible(ref: ModelRef, cfg: ExperimentConfig) -> None:
    """The stage-1 checkpoint must produce the tokens this experiment's stage 2 expects."""
    from mqvq.config.schema import Stage1Config

    have, want, default = ref.config["stage1"], to_dict(cfg.stage1), to_dict(Stage1Config())
    for key in TOKEN_FIELDS:  # a field a checkpoint predates had its default then (the selector: the paper's gain)
        a, b = get_dotted(have, key, get_dotted(default, key)), get_dotted(want, key)
        if a != b:
            raise UserError(
                f"stage-1 checkpoint {ref.checkpoint} was trained with stage1.{key} = {a!r}, but {cfg.name} "
                f"(profile {cfg.profile}) declares {b!r}: pass a matching --stage1 or --set stage1.{key}={a!r}."
            )
