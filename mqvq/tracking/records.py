"""Typed records of the runs mqvq writes: a study row, a training stage, a search trial. Each has one
writer (`tags()`, what a new run of it is tagged with) and one reader (`of(run)`, from an MLflow run),
so the rest of the code never spells a tag or parses a tag value.

The one rule for a row's state lives here too (`RowRecord.state`): a row is finished or failed as
tagged, running only while its lease is live (a worker that died without a word leaves it
`missing`, to be taken over), else missing.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from mqvq.machine import HOST, pid_alive
from mqvq.tracking import tags as T

LEASE_TIMEOUT_S = 120.0  # a row whose lease has not beaten for this long is free (study run --lease-timeout)
HEARTBEAT_S = 15.0  # a row's lease beats this often (at most a quarter of the timeout)


def lease_is_live(owner: str, heartbeat: float, timeout: float = LEASE_TIMEOUT_S, now: float | None = None) -> bool:
    """A lease is live while its heartbeat is fresh and, when its worker ran on this machine, that
    process is alive (owner: `host:pid:nonce`)."""
    if not owner:
        return False
    host, pid, *_ = (owner.split(":") + ["", ""])[:3]
    if host == HOST and pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
        return False
    return (now or time.time()) - heartbeat <= timeout


def _float(value: str | None) -> float:
    try:
        return float(value or 0)
    except ValueError:
        return 0.0


@dataclass(frozen=True)
class DataRecord:
    """The data a row was trained on."""

    name: str
    resolution: int
    digest: str

    def __str__(self) -> str:
        return f"{self.name} {self.resolution}px ({self.digest})"

    @classmethod
    def of(cls, tags: dict[str, str]) -> "DataRecord | None":
        if tags.get(T.DATA_NAME):
            return cls(tags[T.DATA_NAME], int(tags.get(T.DATA_RESOLUTION) or 0), tags.get(T.DATA_DIGEST, "?"))
        legacy = tags.get(T.DATA_LEGACY, "")  # stores written before the structured tags
        name, _, rest = legacy.partition(" ")
        res, _, digest = rest.partition("px (")
        return cls(name, int(res), digest.rstrip(")")) if name and res.isdigit() else None


@dataclass(frozen=True)
class RowRecord:
    """A study row's parent run (one per row and seed): what was asked and where its stages are."""

    study: str
    row: str
    seed: int
    profile: str
    experiment: str
    label: str
    table: str
    config_hash: str
    run_id: str = ""
    status: str = T.Status.MISSING.value
    lease: str = ""
    heartbeat: float = 0.0
    failure: str = ""
    stage1_run: str | None = None
    stage2_run: str | None = None
    data: DataRecord | None = None
    git_commit: str = ""
    slurm_job: str | None = None  # the SLURM task that runs (or ran) it
    slurm_log: str | None = None
    slurm_cancelled: bool = False  # `study cancel` cancelled that task
    metrics: dict[str, float] = field(default_factory=dict)
    eval_tags: dict[str, str] = field(default_factory=dict)  # how each copied metric was measured
    start_time: int | None = None
    end_time: int | None = None

    def tags(self) -> dict[str, object]:
        """What a new row run is tagged with."""
        return {
            T.KIND: T.Kind.ROW.value,
            T.STUDY: self.study,
            T.ROW: self.row,
            T.SEED: self.seed,
            T.PROFILE: self.profile,
            T.EXPERIMENT: self.experiment,
            T.LABEL: self.label,
            T.TABLE: self.table,
            T.CONFIG_HASH: self.config_hash,
        }

    @classmethod
    def of(cls, run) -> "RowRecord":
        t = run.data.tags
        return cls(
            study=t.get(T.STUDY, ""),
            row=t.get(T.ROW, ""),
            seed=int(t.get(T.SEED, 0) or 0),
            profile=t.get(T.PROFILE, ""),
            experiment=t.get(T.EXPERIMENT, ""),
            label=t.get(T.LABEL, ""),
            table=t.get(T.TABLE, ""),
            config_hash=t.get(T.CONFIG_HASH, ""),
            run_id=run.info.run_id,
            status=t.get(T.STATUS, T.Status.MISSING.value),
            lease=t.get(T.LEASE, ""),
            heartbeat=_float(t.get(T.HEARTBEAT)),
            failure=t.get(T.FAILURE, ""),
            stage1_run=t.get(T.STAGE1_RUN) or None,
            stage2_run=t.get(T.STAGE2_RUN) or None,
            data=DataRecord.of(t),
            git_commit=t.get(T.GIT_COMMIT, ""),
            slurm_job=t.get(T.SLURM_JOB) or None,
            slurm_log=t.get(T.SLURM_LOG) or None,
            slurm_cancelled=t.get(T.SLURM_CANCELLED) == "true",
            metrics=dict(run.data.metrics),
            eval_tags={k: v for k, v in t.items() if k in T.EVAL_ENVIRONMENT or T.is_eval_tag(k)},
            start_time=run.info.start_time,
            end_time=run.info.end_time,
        )

    def state(self, lease_timeout: float = LEASE_TIMEOUT_S, now: float | None = None) -> str:
        """finished | failed | running (a live lease) | missing: the one rule for a row's state."""
        if self.status == T.Status.RUNNING.value:
            live = lease_is_live(self.lease, self.heartbeat, lease_timeout, now)
            return T.Status.RUNNING.value if live else T.Status.MISSING.value
        return (
            self.status if self.status in (T.Status.FINISHED.value, T.Status.FAILED.value) else T.Status.MISSING.value
        )


@dataclass(frozen=True)
class StageRecord:
    """A training run of stage 1 or stage 2."""

    stage: str
    config_hash: str
    seed: int
    run_id: str = ""
    experiment_id: str = ""
    mlflow_status: str = ""  # FINISHED, RUNNING, KILLED, FAILED
    experiment: str = ""
    profile: str = ""
    parent_run_id: str | None = None
    stage1_run: str | None = None  # stage 2: the stage-1 model it read ...
    stage1_checkpoint: str | None = None  # ... and that file's digest
    heartbeat: float = 0.0
    device_name: str = ""
    torch_threads: str | None = None
    eval_seconds: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    start_time: int | None = None
    end_time: int | None = None
    resumed: bool = False  # trained by more than one process: its wall time may include time queued
    trainer: str = ""  # host:pid of the process training it (runs since 2026-12)

    @property
    def finished(self) -> bool:
        return self.mlflow_status == "FINISHED"

    @classmethod
    def of(cls, run) -> "StageRecord":
        t = run.data.tags
        return cls(
            stage=t.get(T.STAGE, ""),
            config_hash=t.get(T.CONFIG_HASH, ""),
            seed=int(t.get(T.SEED, 0) or 0),
            run_id=run.info.run_id,
            experiment_id=run.info.experiment_id,
            mlflow_status=run.info.status,
            experiment=t.get(T.EXPERIMENT, ""),
            profile=t.get(T.PROFILE, ""),
            parent_run_id=t.get(T.MLFLOW_PARENT),
            stage1_run=t.get(T.STAGE1_RUN) or None,
            stage1_checkpoint=t.get(T.STAGE1_CHECKPOINT) or None,
            heartbeat=_float(t.get(T.HEARTBEAT)),
            device_name=t.get(T.DEVICE_NAME, ""),
            torch_threads=t.get(T.TORCH_THREADS),
            eval_seconds=float(t[T.EVAL_SECONDS]) if t.get(T.EVAL_SECONDS) else None,
            metrics=dict(run.data.metrics),
            params=dict(run.data.params),
            start_time=run.info.start_time,
            end_time=run.info.end_time,
            resumed=bool(t.get(T.RESUMED_FROM_STEP)),
            trainer=t.get(T.TRAINER, ""),
        )

    @staticmethod
    def is_stage(run) -> bool:
        return (
            run.data.tags.get(T.STAGE) in (T.Stage.STAGE1.value, T.Stage.STAGE2.value)
            and run.data.tags.get(T.KIND) != T.Kind.ROW.value
        )


def stage_of(run) -> str | None:
    """A run's stage tag (None for runs that are not training stages)."""
    return run.data.tags.get(T.STAGE)


@dataclass(frozen=True)
class TrialRecord:
    """One trial of a sampling search, a child of the model's stage-2 run."""

    search: str
    trial: int
    model_run: str
    storage: str
    metric: str
    backend: str
    reference: str
    split: str

    def tags(self) -> dict[str, object]:
        return {
            T.KIND: T.Kind.SEARCH_TRIAL.value,
            T.SEARCH: self.search,
            T.TRIAL: self.trial,
            T.MODEL_RUN: self.model_run,
            T.SEARCH_STORAGE: self.storage,
            T.eval_tag(self.metric, "backend"): self.backend,
            T.eval_tag(self.metric, "reference"): self.reference,
            T.eval_tag(self.metric, "split"): self.split,
        }

    @classmethod
    def of(cls, run) -> "TrialRecord":
        t = run.data.tags
        facts = next(iter(T.eval_facts(t).items()), ("", {}))
        return cls(
            t.get(T.SEARCH, ""),
            int(t.get(T.TRIAL, 0) or 0),
            t.get(T.MODEL_RUN, ""),
            t.get(T.SEARCH_STORAGE, ""),
            facts[0],
            facts[1].get("backend", ""),
            facts[1].get("reference", ""),
            facts[1].get("split", ""),
        )


@dataclass(frozen=True)
class DatasetRecord:
    """A dataset a run trained or was evaluated on, as MLflow's Datasets show it (`Tracker.log_dataset`)."""

    name: str
    split: str
    size: int
    resolution: int
    digest: str
    source_type: str  # local | code
    source: str  # a folder path, or the generator / package

    @property
    def title(self) -> str:
        return f"{self.name} {self.split}"
