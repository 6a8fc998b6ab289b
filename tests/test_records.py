"""Typed run records: each writer's tags read back by its reader, the one row-state rule, and the
filter strings built from tag names, on a real (SQLite) MLflow store."""

import os
import time

import pytest

from mqvq.tracking import tags as T
from mqvq.tracking.records import DataRecord, RowRecord, StageRecord, TrialRecord, lease_is_live


def test_a_row_record_round_trips_through_a_store(tracker):
    rec = RowRecord(
        study="s",
        row="a'b",
        seed=2,
        profile="smoke",
        experiment="vqgan-f16",
        label="VQGAN",
        table="Table 6",
        config_hash="abc",
    )
    run_id = tracker.start_run("s/smoke", "a-s2", rec.tags())
    tracker.set_tags(
        run_id,
        {
            T.STAGE1_RUN: "r1",
            T.DATA_NAME: "procedural",
            T.DATA_RESOLUTION: 32,
            T.DATA_DIGEST: "d1",
            T.eval_tag("fd_vgg16", "backend"): "vgg16",
        },
    )
    runs = tracker.find_runs("s/smoke", T.where(kind=T.Kind.ROW, study="s", row="a'b", seed=2))  # a quote in a value
    assert [r.info.run_id for r in runs] == [run_id]
    back = RowRecord.of(runs[0])
    assert (back.study, back.row, back.seed, back.label, back.table, back.config_hash) == (
        "s",
        "a'b",
        2,
        "VQGAN",
        "Table 6",
        "abc",
    )
    assert back.stage1_run == "r1" and back.stage2_run is None
    assert back.data == DataRecord("procedural", 32, "d1") and str(back.data) == "procedural 32px (d1)"
    assert T.eval_facts(back.eval_tags) == {"fd_vgg16": {"backend": "vgg16"}}
    assert tracker.find_runs("s/smoke", T.where(kind=T.Kind.ROW, study="s", row="a'b", seed=3)) == []


def test_stores_written_before_the_structured_data_tags_still_read():
    assert DataRecord.of({T.DATA_LEGACY: "fashion-mnist 32px (0123abcd)"}) == DataRecord(
        "fashion-mnist", 32, "0123abcd"
    )
    assert DataRecord.of({}) is None and DataRecord.of({T.DATA_LEGACY: "garbage"}) is None


def test_the_row_state_rule():
    base = dict(study="s", row="r", seed=0, profile="smoke", experiment="e", label="r", table="", config_hash="")
    now = time.time()
    me = f"{os.uname().nodename}:{os.getpid()}:x"
    assert RowRecord(**base, status="finished").state() == "finished"
    assert RowRecord(**base, status="failed").state() == "failed"
    assert RowRecord(**base, status="killed").state() == "missing"  # resumable: nobody holds it
    assert RowRecord(**base, status="running", lease="elsewhere:1:x", heartbeat=now).state(now=now) == "running"
    assert RowRecord(**base, status="running", lease="elsewhere:1:x", heartbeat=now - 121).state(now=now) == "missing"
    assert RowRecord(**base, status="running", lease="", heartbeat=now).state(now=now) == "missing"
    assert lease_is_live(me, now, 120, now)  # this very process


def test_stage_and_trial_records_read_what_their_runs_carry(tracker):
    run_id = tracker.start_run(
        "e",
        "stage1-x",
        {
            T.STAGE: "stage1",
            T.CONFIG_HASH: "h",
            T.SEED: 1,
            T.EXPERIMENT: "vqgan-f16",
            T.PROFILE: "smoke",
            T.DEVICE_NAME: "CPU x",
            T.TORCH_THREADS: 2,
        },
    )
    rec = StageRecord.of(tracker.get_run(run_id))
    assert (rec.stage, rec.config_hash, rec.seed, rec.torch_threads, rec.finished) == ("stage1", "h", 1, "2", False)
    tracker.end_run(run_id)
    assert StageRecord.of(tracker.get_run(run_id)).finished
    trial = TrialRecord("sampling/x", 3, "m", "journal", "fd_vgg16", "vgg16", "ref", "test")
    t_id = tracker.start_run("e", "trial-0003", trial.tags(), parent_run_id=run_id)
    assert TrialRecord.of(tracker.get_run(t_id)) == trial
    assert not StageRecord.is_stage(tracker.get_run(t_id))


def _log_one_dataset_per_experiment(home: str, worker: int, barrier, n: int, errors) -> None:
    from mqvq.tracking import Tracker
    from mqvq.tracking.records import DatasetRecord

    tracker = Tracker(None, home)
    record = DatasetRecord("procedural", "train", 32, 16, "d1", "code", "mqvq")
    for i in range(n):
        run_id = tracker.start_run(f"e{i}", f"w{worker}", {})
        barrier.wait(120)  # both workers log the same dataset into e{i} at one instant, however loaded the machine
        try:
            tracker.log_dataset(run_id, record, "training")
        except Exception as e:  # noqa: BLE001  (reported to the test)
            errors.put(f"{type(e).__name__}: {e}")


@pytest.mark.integration
def test_two_workers_logging_the_same_dataset_at_once_both_succeed(tracker):
    """MLflow looks a dataset up and then inserts it; two study workers starting rows on the same data
    at once used to collide on the insert and fail one row's stage-1 run (seen as a FAILED run)."""
    import multiprocessing as mp

    for i in range(8):
        tracker.experiment_id(f"e{i}")
    ctx = mp.get_context("spawn")
    errors = ctx.Queue()
    barrier = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_log_one_dataset_per_experiment, args=(str(tracker.home), w, barrier, 8, errors))
        for w in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert found == [] and all(p.exitcode == 0 for p in procs)
    runs = tracker.find_runs_everywhere("")
    assert len(runs) == 16 and all(r.inputs.dataset_inputs for r in runs)


def test_a_history_has_one_value_per_step_the_one_logged_last(tracker):
    """A run resumed from its last checkpoint trains the steps after it again: Fig. 6a and the mask curves read
    each step once, with the value the finished run continued from."""
    run_id = tracker.start_run("e", "resumed", {T.STAGE: "stage2"})
    for step, value, ms in [
        (1, 3.0, 1000),
        (2, 2.5, 2000),
        (3, 2.4, 3000),  # the first process, killed after step 3
        (3, 2.3, 9000),
        (2, 2.6, 8000),
        (4, 2.0, 10000),
    ]:  # resumed from the checkpoint at step 1
        tracker.client.log_metric(run_id, "train/loss", value, timestamp=ms, step=step)
    assert len(tracker.client.get_metric_history(run_id, "train/loss")) == 6
    hist = tracker.metric_history(run_id, "train/loss")
    assert [(m.step, m.value) for m in hist] == [(1, 3.0), (2, 2.6), (3, 2.3), (4, 2.0)]


def test_each_stage_logs_its_step_time_under_its_own_name_and_older_runs_read_under_theirs(tracker):
    from mqvq.metrics.registry import LEGACY_STEP_SECONDS, REGISTRY, STEP_SECONDS, named_step_seconds
    from mqvq.studies.plan import measured_costs

    assert STEP_SECONDS["stage1"] != STEP_SECONDS["stage2"] and REGISTRY["cost"].name() == STEP_SECONDS["stage1"]
    assert named_step_seconds({LEGACY_STEP_SECONDS: 0.5}, "stage1")[STEP_SECONDS["stage1"]] == 0.5
    assert (
        named_step_seconds({LEGACY_STEP_SECONDS: 0.5, STEP_SECONDS["stage2"]: 0.2}, "stage2")[STEP_SECONDS["stage2"]]
        == 0.2
    )
    # measured costs: an old run's step time counts; a resumed run's wall time (which may include time queued
    # between a preemption and its requeue) does not count as overhead
    from mqvq.machine import cpu_name, torch_threads

    tags = {
        T.STAGE: "stage1",
        T.CONFIG_HASH: "h",
        T.EXPERIMENT: "vqgan-f16",
        T.PROFILE: "smoke",
        T.DEVICE_NAME: cpu_name(),
        T.TORCH_THREADS: torch_threads(tracker.home),
    }
    for name, metric, resumed, wall_s in [
        ("old", LEGACY_STEP_SECONDS, False, 15.0),
        ("new", STEP_SECONDS["stage1"], False, 25.0),
        ("requeued", STEP_SECONDS["stage1"], True, 4000.0),
    ]:
        run_id = tracker.start_run(
            "e", name, tags | ({T.RESUMED_FROM_STEP: 5} if resumed else {}), {"stage1.train.steps": 10}
        )
        tracker.log_metrics(run_id, {metric: 1.0}, 10)
        tracker.end_run(run_id)
        info = tracker.get_run(run_id).info
        tracker.client.set_terminated(run_id, "FINISHED", end_time=info.start_time + int(wall_s * 1000))
    costs = measured_costs(tracker, "smoke", "cpu")
    assert costs.runs == 3 and costs.step_s[("stage1", "h")] == 1.0
    assert costs.overhead_s["stage1"] == pytest.approx(
        10.0
    )  # the median of 5 s and 15 s; the requeued run's 3990 s are not


def test_a_cancelled_rows_runs_end_at_every_depth_and_in_every_experiment(tracker):
    """`study cancel` ends what a killed task left RUNNING: the stage runs under its row, and the sampling-search
    trials under a stage-2 run, which live in an experiment of their own."""
    from mqvq.studies.cluster import _end_running_below

    row = tracker.start_run("s/smoke", "row", {T.KIND: T.Kind.ROW.value})
    stage2 = tracker.start_run("s/smoke", "stage2", {T.STAGE: "stage2"}, parent_run_id=row)
    trial = tracker.start_run("sampling/x", "trial-0001", {T.KIND: "trial"}, parent_run_id=stage2)
    other = tracker.start_run("s/smoke", "another row's", {T.STAGE: "stage1"})
    _end_running_below(tracker, row, "cancelled (SLURM task 7_0)")
    assert [tracker.get_run(r).info.status for r in (stage2, trial, other)] == ["KILLED", "KILLED", "RUNNING"]
    assert tracker.get_run(trial).data.tags[T.FAILURE] == "cancelled (SLURM task 7_0)"
