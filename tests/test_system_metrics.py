"""System metrics on training and evaluation runs (tracking/system.py): MLflow's monitors sampled in
a thread, on by default, off by config (`tracking.system_metrics`) or `--no-system-metrics`, and
never part of a run's identity."""

from __future__ import annotations

import time

import pytest
from typer.testing import CliRunner

from mqvq.cli import app
from mqvq.config import config_hash, identity
from mqvq.stages.train_stage1 import train_stage1
from mqvq.tracking.system import PREFIX, SystemMetrics
from tests.conftest import TINY

runner = CliRunner()


def _system(tracker, run_id) -> dict[str, float]:
    return {k: v for k, v in tracker.get_run(run_id).data.metrics.items() if k.startswith(PREFIX)}


def test_samples_while_the_body_runs_and_once_at_the_end(tracker):
    run_id = tracker.start_run("e", "r", {})
    with SystemMetrics(tracker, run_id, interval=0.2) as s:
        deadline = time.monotonic() + 120  # a count of samples, not a time: a loaded machine only takes longer
        while s.samples < 2 and time.monotonic() < deadline:  # busy, as training is
            pass
    names = _system(tracker, run_id)
    assert {
        "system/cpu_utilization_percentage",
        "system/system_memory_usage_megabytes",
        "system/disk_usage_percentage",
        "system/network_receive_megabytes",
    } <= set(names)
    history = tracker.metric_history(run_id, "system/cpu_utilization_percentage", every=True)
    assert len(history) == s.samples >= 3 and all(0 <= m.value <= 100 * 64 for m in history)
    assert all(m.value > 0 for m in history)  # a busy CPU from the first sample (psutil's baseline is per thread)
    steps = [m.step for m in history]  # seconds since the run started: one axis across resumes and evaluations
    assert steps == sorted(steps) and steps[-1] <= 60


def test_off_by_flag_or_environment(tracker, monkeypatch):
    run_id = tracker.start_run("e", "r", {})
    with SystemMetrics(tracker, run_id, interval=0.1, enabled=False):
        time.sleep(0.3)
    monkeypatch.setenv("MQVQ_SYSTEM_METRICS", "0")
    with SystemMetrics(tracker, run_id, interval=0.1):
        time.sleep(0.3)
    assert _system(tracker, run_id) == {}


def test_the_setting_never_changes_a_runs_identity(tiny):
    on, off = (
        tiny(),
        tiny("mqvae-f16-adaptive-50", "tracking.system_metrics=false", "tracking.system_metrics_interval=5"),
    )
    assert off.tracking.system_metrics is False and on.tracking.system_metrics is True
    assert config_hash(identity(on)) == config_hash(identity(off))  # a study row: the same row
    assert config_hash(identity(on.stage1)) == config_hash(identity(off.stage1))


@pytest.mark.parametrize("value", ["0.2", "99999"])
def test_an_interval_out_of_range_is_one_sentence(value):
    r = runner.invoke(
        app, ["experiment", "show", "mqvae-f16-adaptive-50", "--set", f"tracking.system_metrics_interval={value}"]
    )
    assert r.exit_code == 2 and "tracking.system_metrics_interval" in r.output and "between 1 and 3600" in r.output
    assert "Traceback" not in r.output


@pytest.mark.integration  # trains three runs and evaluates one
def test_training_and_evaluation_runs_carry_them_unless_turned_off(tiny, tracker, monkeypatch):
    s1 = train_stage1(tiny(), tracker, progress=False)["run_id"]
    assert "system/cpu_utilization_percentage" in _system(tracker, s1)
    quiet = train_stage1(
        tiny("mqvae-f16-adaptive-50", "tracking.system_metrics=false", seed=1), tracker, progress=False
    )["run_id"]
    assert _system(tracker, quiet) == {}
    r = runner.invoke(app, ["eval", quiet, "--metrics", "usage", "--home", str(tracker.home), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert _system(tracker, quiet) == {}  # the run's own setting
    points = lambda: len(tracker.metric_history(s1, "system/cpu_utilization_percentage", every=True))  # noqa: E731
    before = points()
    r = runner.invoke(
        app, ["eval", s1, "--metrics", "usage", "--home", str(tracker.home), "--no-progress", "--no-system-metrics"]
    )
    assert r.exit_code == 0, r.output
    assert points() == before
    r = runner.invoke(app, ["eval", s1, "--metrics", "usage", "--home", str(tracker.home), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert points() == before + 1  # the evaluation's own point


def test_no_system_metrics_reaches_the_processes_a_command_starts(tiny, tracker):
    r = runner.invoke(
        app,
        [
            "train",
            "stage1",
            "mqvae-f16-adaptive-50",
            "--home",
            str(tracker.home),
            "--no-progress",
            "--no-system-metrics",
            *[a for s in TINY for a in ("--set", s)],
        ],
    )
    assert r.exit_code == 0, r.output
    import os

    assert os.environ.get("MQVQ_SYSTEM_METRICS") == "0"  # inherited by study workers, torchrun ranks, SLURM tasks
    (run,) = tracker.find_runs_everywhere("")
    assert _system(tracker, run.info.run_id) == {}
