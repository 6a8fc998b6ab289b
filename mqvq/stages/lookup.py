"""Which checkpoint does a user mean? A path, an MLflow run id, or 'the finished run of this config'."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mqvq.config import ExperimentConfig, config_hash, get_dotted, identity, to_dict
from mqvq.errors import UserError
from mqvq.tracking.store import Tracker

# stage-1 fields the stage-2 tokens depend on: a checkpoint differing in any of them is a mistake
TOKEN_FIELDS = ("model.mask.type", "model.mask.ratio", "model.quantizer.codebook_size", "model.downsample", "data.resolution")


@dataclass(frozen=True)
class ModelRef:
    checkpoint: Path
    run_id: str | None
    config: dict          # the experiment config the checkpoint was trained with


def checkpoint_path(home: Path, run_id: str) -> Path:
    """A run's resumable checkpoint (written while it trains)."""
    return home / "checkpoints" / run_id / "last.pt"


def stage2_hash(cfg: ExperimentConfig, stage1_digest: str) -> str:
    """Identity of a stage-2 run: its own config plus the exact stage-1 checkpoint it reads."""
    return config_hash({"stage2": identity(cfg.stage2), "stage1_checkpoint": stage1_digest, "data": identity(cfg.stage1.data)})


def model_file(tracker: Tracker, run_id: str) -> Path:
    """A finished run's `checkpoints/model.pt`: the local working copy, else downloaded from its artifacts."""
    local = tracker.home / "checkpoints" / run_id / "model.pt"
    if local.is_file():
        return local
    try:
        return tracker.download_artifact(run_id, "checkpoints/model.pt", local.parent)
    except Exception:  # MLflow raises several types for missing artifacts
        raise UserError(f"run {run_id} has no model checkpoint (checkpoints/model.pt): did it finish?") from None


def resolve(tracker: Tracker, spec: str, stage: str) -> ModelRef:
    """A checkpoint path or an MLflow run id of a finished `stage` run."""
    from mqvq.models.checkpoint import read_checkpoint  # torch: not for the commands that only plan

    path = Path(spec)
    if path.suffix == ".pt" or path.is_file():
        if not path.is_file():
            raise UserError(f"checkpoint {path} does not exist.")
        ckpt = read_checkpoint(path)
        if ckpt.get("stage") != stage:
            raise UserError(f"{path} is a {ckpt.get('stage')} checkpoint, not {stage}.")
        return ModelRef(path, ckpt.get("run_id"), ckpt["config"])
    from mlflow.exceptions import MlflowException

    try:
        run = tracker.client.get_run(spec)
    except MlflowException:
        raise UserError(f"{spec!r} is neither a checkpoint file nor an MLflow run id in {tracker.uri}.") from None
    if run.data.tags.get("mqvq.stage") != stage:
        raise UserError(f"run {spec} is a {run.data.tags.get('mqvq.stage', 'non-mqvq')} run, not {stage}.")
    if run.info.status != "FINISHED":
        raise UserError(f"{stage} run {spec} is {run.info.status.lower()}, not finished: resume it first.")
    path = model_file(tracker, spec)
    return ModelRef(path, spec, read_checkpoint(path)["config"])


def find_stage1(tracker: Tracker, cfg: ExperimentConfig, experiment: str) -> ModelRef:
    """The latest finished stage-1 run of exactly this experiment's stage-1 config and seed: from the
    experiment's own MLflow experiment first, else from any (a study's rows train in the study's)."""
    h = config_hash(identity(cfg.stage1))
    query = (f"tags.\"mqvq.stage\" = 'stage1' and tags.\"mqvq.config_hash\" = '{h}' "
             f"and tags.\"mqvq.seed\" = '{cfg.seed}' and attributes.status = 'FINISHED'")
    runs = tracker.find_runs(experiment, query) or tracker.find_runs_everywhere(query)
    if not runs:
        raise UserError(f"no finished stage-1 run of {cfg.name} (profile {cfg.profile}, seed {cfg.seed}) in {tracker.uri}: "
                        f"train one with `mqvq train stage1 {cfg.name} --profile {cfg.profile}` or pass --stage1 RUN_OR_CHECKPOINT.")
    return resolve(tracker, runs[0].info.run_id, "stage1")


def check_compatible(ref: ModelRef, cfg: ExperimentConfig) -> None:
    """The stage-1 checkpoint must produce the tokens this experiment's stage 2 expects."""
    have, want = ref.config["stage1"], to_dict(cfg.stage1)
    for key in TOKEN_FIELDS:
        a, b = get_dotted(have, key), get_dotted(want, key)
        if a != b:
            raise UserError(f"stage-1 checkpoint {ref.checkpoint} was trained with stage1.{key} = {a!r}, but {cfg.name} "
                            f"(profile {cfg.profile}) declares {b!r}: pass a matching --stage1 or --set stage1.{key}={a!r}.")
