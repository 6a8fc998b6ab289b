"""Run lifecycle shared by the training stages: find / resume / start the MLflow run, the working
checkpoint (one save / restore for both stages: `TrainingRun`), and the metric window that syncs
with the device once per log."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mqvq import runtime
from mqvq.errors import LeaseLost, UserError
from mqvq.machine import HOST
from mqvq.models.checkpoint import FORMAT, atomic_save, load_checkpoint
from mqvq.runtime import Dist, gather_rng_states, seed_all, set_rng_state
from mqvq.stages.lookup import checkpoint_path
from mqvq.timing import device_name
from mqvq.data.datasets import data_source
from mqvq.tracking import tags as T
from mqvq.tracking.records import DatasetRecord
from mqvq.tracking.store import Tracker
from mqvq.tracking.system import SystemMetrics


def find_resumable(tracker: Tracker, experiment: str, stage: str, config_hash: str, seed: int) -> str | None:
    """Latest unfinished run of exactly this stage, config and seed."""
    runs = tracker.find_runs(experiment, T.where(T.unfinished(), stage=stage, config_hash=config_hash, seed=seed))
    return runs[0].info.run_id if runs else None


def open_run(
    tracker: Tracker,
    d: Dist,
    *,
    experiment: str,
    stage: str,
    config_hash: str,
    seed: int,
    what: str,
    run_name: str,
    tags: dict,
    params: dict,
    artifacts: dict[str, dict],
    resume: bool,
    run_id: str | None,
    parent_run_id: str | None = None,
) -> str:
    """Resume (`resume` / `run_id`) or start the run on rank 0; every rank gets its id."""
    if d.main:
        if resume or run_id:
            run_id = run_id or find_resumable(tracker, experiment, stage, config_hash, seed)
            if run_id is None:
                raise UserError(f"no unfinished {stage} run of {what} to resume: run without --resume.")
            run = tracker.get_run(run_id)
            if run.data.tags.get(T.STAGE) != stage:
                raise UserError(f"run {run_id} is a {run.data.tags.get(T.STAGE, 'non-mqvq')} run, not {stage}.")
            if run.data.tags.get(T.CONFIG_HASH) != config_hash:
                raise UserError(
                    f"run {run_id} was trained with a different {stage} config: resume it with the same experiment, profile and --set values."
                )
            if run.info.status == "FINISHED":
                raise UserError(f"run {run_id} already finished; nothing to resume.")
            tracker.resume_run(run_id)
            tracker.set_tags(run_id, {T.TRAINER: f"{HOST}:{os.getpid()}"})
        else:
            tags = {
                T.STAGE: stage,
                T.CONFIG_HASH: config_hash,
                T.SEED: seed,
                T.WORLD_SIZE: d.world,
                T.DEVICE: str(d.device),
                T.TRAINER: f"{HOST}:{os.getpid()}",
                T.DEVICE_NAME: device_name(d.device),
                T.TORCH_THREADS: torch.get_num_threads(),
                **tags,
            }
            run_id = tracker.start_run(experiment, run_name, tags, params, parent_run_id=parent_run_id)
            for name, data in artifacts.items():
                tracker.log_dict(run_id, data, name)
        tracker.set_tags(run_id, {T.CHECKPOINT: str(checkpoint_path(tracker.home, run_id))})
    return runtime.broadcast_object(run_id)


def stage_run_name(stage: str, cfg) -> str:
    """A stage run's name, which its logged model shares: stage1-mqvae-f16-adaptive-50-smoke-s0."""
    return f"{stage}-{cfg.name}-{cfg.profile}-s{cfg.seed}"


def new_stage_model(run: "TrainingRun", cfg, stage: str, model_type: str, step: int, params: dict):
    """`Tracker.new_model` for a stage run's final weights, named and tagged as the run is."""
    return run.tracker.new_model(
        run.run_id,
        stage_run_name(stage, cfg),
        model_type,
        step,
        params,
        {T.STAGE: stage, T.EXPERIMENT: cfg.name, T.PROFILE: cfg.profile, T.SEED: cfg.seed},
    )


def model_location(model_id: str, file: Path) -> str:
    """Where a stage's final weights are, for the summary: the file in a local store, else (uploaded from a
    temporary folder to a remote artifact store) the logged model's URI, which `sample` / `eval` accept."""
    return str(file) if file.is_file() else f"models:/{model_id}"


@dataclass
class TrainingRun:
    """A training stage's run while it trains: where it logs, its working checkpoint, the state that
    checkpoint holds (modules and optimizers by name, plus a header: format, stage, config) and the
    step reached, which the loop keeps current (an interrupted run's reason names it)."""

    tracker: Tracker
    dist: Dist
    run_id: str | None  # set once the MLflow run exists
    parts: dict[str, Any]  # name -> a module or optimizer: what the checkpoint restores
    header: dict[str, Any]  # written into every checkpoint beside the parts
    step: int = 0
    system: SystemMetrics | None = None  # sampling while the run trains (rank 0)

    def watch_system(self, interval: float, enabled: bool) -> None:
        """Log system metrics on the run until it ends (`closing_run` stops them)."""
        if self.dist.main and enabled:
            self.system = SystemMetrics(self.tracker, self.run_id, interval).__enter__()

    @property
    def checkpoint(self) -> Path:
        return checkpoint_path(self.tracker.home, self.run_id)

    def restore(self, seed: int) -> int:
        """Continue from the working checkpoint (parts, step, this rank's RNG), or start the ranks'
        random streams apart when there is none; returns the step to start from."""
        if self.checkpoint.is_file():
            ckpt = load_checkpoint(self.checkpoint, self.dist.device)
            for name, part in self.parts.items():
                part.load_state_dict(ckpt[name])
            rngs = ckpt["rng"]
            set_rng_state(rngs[self.dist.rank] if self.dist.rank < len(rngs) else rngs[0], self.dist.device)
            self.step = ckpt["step"]
        else:
            seed_all(seed * 1000 + self.dist.rank)  # ranks draw different batches and masks
        return self.step

    def save(self) -> None:
        """Write the working checkpoint (every rank calls it: the RNG states are gathered)."""
        rng = gather_rng_states(self.dist.device)
        if self.dist.main:
            self.tracker.check_fence()  # a worker that lost its row's lease writes no checkpoint
            atomic_save(
                {
                    "format": FORMAT,
                    **self.header,
                    "step": self.step,
                    "run_id": self.run_id,
                    **{name: part.state_dict() for name, part in self.parts.items()},
                    "rng": rng,
                },
                self.checkpoint,
            )

    def mark_resumed(self) -> dict:
        """Say where a resumed run continues, in MLflow and in the summary."""
        if self.step and self.dist.main:
            self.tracker.set_tags(self.run_id, {T.RESUMED_FROM_STEP: self.step})
        return {"resumed_from": self.step} if self.step else {}


@contextlib.contextmanager
def closing_run(run: TrainingRun):
    """End the MLflow run however the body ends: FAILED with the reason on an error, KILLED on
    Ctrl-C (resumable), else the status the body sets in the yielded dict (FINISHED / KILLED)."""
    state = {"status": "FAILED", "reason": ""}
    try:
        yield state
    except KeyboardInterrupt:
        state.update(status="KILLED", reason=f"interrupted at step {run.step}")
        raise
    except LeaseLost:
        state["status"] = None  # the run is another worker's now: end nothing
        raise
    except BaseException as e:
        state["reason"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        if run.system is not None:
            run.system.__exit__(None, None, None)
        if run.dist.main and run.run_id is not None and state["status"] is not None:
            run.tracker.end_run(run.run_id, state["status"], state["reason"])
        runtime.teardown()


def publish(tracker: Tracker, d: Dist, run_id: str, metrics: dict[str, float], step: int) -> None:
    """Rank 0 logs a window's metrics and refreshes the run's heartbeat."""
    if d.main:
        tracker.log_metrics(run_id, metrics, step)
        tracker.heartbeat(run_id)


@contextlib.contextmanager
def checkpoint_on_exit(save):
    """Write a checkpoint when the loop ends, and on Ctrl-C before the interrupt propagates."""
    try:
        yield
    except KeyboardInterrupt:
        save()
        raise
    save()


class LoopClock:
    """Seconds per training step in this process, validation passes excluded: what `study plan`
    multiplies by a row's steps to estimate its time (logged as the registry's `STEP_SECONDS[stage]`)."""

    def __init__(self, start_step: int):
        self.start_step, self.t0, self.paused = start_step, time.perf_counter(), 0.0

    @contextlib.contextmanager
    def pause(self):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.paused += time.perf_counter() - t

    def step_seconds(self, step: int) -> float | None:
        done = step - self.start_step
        return (time.perf_counter() - self.t0 - self.paused) / done if done > 0 else None


class MetricWindow:
    """Sums logged device scalars over a window; one host sync per `flush`."""

    def __init__(self, items_per_step: int):
        self.items_per_step = items_per_step
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.start = time.perf_counter()

    def add(self, logs: dict[str, torch.Tensor]) -> None:
        for k, v in logs.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.float()
        self.steps += 1

    def flush(self, prefix: str = "train/", rate_name: str = "images_per_s") -> dict[str, float]:
        elapsed = time.perf_counter() - self.start
        out = {f"{prefix}{k}": (v / max(self.steps, 1)).item() for k, v in self.sums.items()}
        out[f"{prefix}{rate_name}"] = self.steps * self.items_per_step / max(elapsed, 1e-9)
        self.reset()
        return out


def dataset_record(cfg, ds, split: str) -> DatasetRecord:
    """What MLflow's Datasets show for one split of the data `cfg` (a DataConfig) describes."""
    kind, source = data_source(cfg)
    name = cfg.layout if cfg.name == "folder" else cfg.name
    return DatasetRecord(name, split, len(ds), cfg.resolution, ds.digest(), kind, source)


def log_datasets(tracker: Tracker, d: Dist, run_id: str, cfg, train_ds, test_ds) -> None:
    """The run's training and evaluation data as MLflow inputs, once (a resumed run has them)."""
    if not d.main or tracker.has_datasets(run_id):
        return
    tracker.log_dataset(run_id, dataset_record(cfg, train_ds, "train"), "training")
    tracker.log_dataset(run_id, dataset_record(cfg, test_ds, "test"), "evaluation")
