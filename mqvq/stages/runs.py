"""Run lifecycle shared by the training stages: find / resume / start the MLflow run, the
working checkpoint's place, and the metric window that syncs with the device once per log."""
from __future__ import annotations

import contextlib
import time

import torch

from mqvq import runtime
from mqvq.errors import UserError
from mqvq.runtime import Dist
from mqvq.stages.lookup import checkpoint_path
from mqvq.timing import device_name
from mqvq.tracking.store import Tracker


def find_resumable(tracker: Tracker, experiment: str, stage: str, config_hash: str, seed: int) -> str | None:
    """Latest unfinished run of exactly this stage, config and seed."""
    runs = tracker.find_runs(experiment, f"tags.\"mqvq.stage\" = '{stage}' and tags.\"mqvq.config_hash\" = '{config_hash}' "
                                         f"and tags.\"mqvq.seed\" = '{seed}' and attributes.status != 'FINISHED'")
    return runs[0].info.run_id if runs else None


def open_run(tracker: Tracker, d: Dist, *, experiment: str, stage: str, config_hash: str, seed: int, what: str,
             run_name: str, tags: dict, params: dict, artifacts: dict[str, dict], resume: bool, run_id: str | None,
             parent_run_id: str | None = None) -> str:
    """Resume (`resume` / `run_id`) or start the run on rank 0; every rank gets its id."""
    if d.main:
        if resume or run_id:
            run_id = run_id or find_resumable(tracker, experiment, stage, config_hash, seed)
            if run_id is None:
                raise UserError(f"no unfinished {stage} run of {what} to resume: run without --resume.")
            run = tracker.get_run(run_id)
            if run.data.tags.get("mqvq.stage") != stage:
                raise UserError(f"run {run_id} is a {run.data.tags.get('mqvq.stage', 'non-mqvq')} run, not {stage}.")
            if run.data.tags.get("mqvq.config_hash") != config_hash:
                raise UserError(f"run {run_id} was trained with a different {stage} config: resume it with the same experiment, profile and --set values.")
            if run.info.status == "FINISHED":
                raise UserError(f"run {run_id} already finished; nothing to resume.")
            tracker.resume_run(run_id)
        else:
            tags = {"mqvq.stage": stage, "mqvq.config_hash": config_hash, "mqvq.seed": seed,
                    "mqvq.world_size": d.world, "mqvq.device": str(d.device), "mqvq.device_name": device_name(d.device),
                    "mqvq.torch_threads": torch.get_num_threads(), **tags}
            run_id = tracker.start_run(experiment, run_name, tags, params, parent_run_id=parent_run_id)
            for name, data in artifacts.items():
                tracker.log_dict(run_id, data, name)
        tracker.set_tags(run_id, {"mqvq.checkpoint": str(checkpoint_path(tracker.home, run_id))})
    return runtime.broadcast_object(run_id)


@contextlib.contextmanager
def closing_run(tracker: Tracker, d: Dist, run_id: str, summary: dict):
    """End the MLflow run however the body ends: FAILED with the reason on an error, KILLED on
    Ctrl-C (resumable), else the status the body sets in the yielded dict (FINISHED / KILLED)."""
    state = {"status": "FAILED", "reason": ""}
    try:
        yield state
    except KeyboardInterrupt:
        state.update(status="KILLED", reason=f"interrupted at step {summary['step']}")
        raise
    except BaseException as e:
        state["reason"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        if d.main:
            tracker.end_run(run_id, state["status"], state["reason"])
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
    multiplies by a row's steps to estimate its time (logged as `time/step_seconds`)."""

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
