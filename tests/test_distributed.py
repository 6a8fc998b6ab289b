"""Multi-process DDP on CPU (gloo) through torchrun: the same command that runs on GPUs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # several processes


def test_torchrun_two_processes_both_stages(tmp_path):
    env = {**os.environ, "MQVQ_HOME": str(tmp_path / "h"), "OMP_NUM_THREADS": "1"}
    sets = [
        "--set",
        "stage1.train.steps=4",
        "--set",
        "stage1.train.log_every=2",
        "--set",
        "stage1.loss.disc_start=2",
        "--set",
        "stage1.data.resolution=16",
        "--set",
        "stage2.train.steps=4",
        "--set",
        "stage2.train.log_every=2",
    ]
    for stage in ("stage1", "stage2"):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "-m",
            "mqvq",
            "train",
            stage,
            "mqvae-f16-adaptive-25",
            "--no-progress",
            *sets,
        ]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parent.parent)
        assert p.returncode == 0, p.stderr[-3000:]
        assert p.stdout.count(f"finished stage-{stage[-1]} run") == 1  # only rank 0 reports
    from mqvq.tracking import Tracker

    runs = Tracker(None, tmp_path / "h").find_runs("mqvae-f16-adaptive-25")
    assert {r.data.tags["mqvq.stage"] for r in runs} == {"stage1", "stage2"}
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags["mqvq.world_size"] == "2"


def test_a_study_row_trains_each_stage_under_torchrun(tmp_path):
    """`study run --nproc 2` (what a SLURM task with 2 GPUs runs): both stages of the row as two DDP
    processes, in the row's MLflow runs, and the row finishes."""
    from tests.test_studies import write_study

    write_study(tmp_path / "studies", "ddp", [("a", "mqvae-f16-adaptive-25")], metrics='["usage"]')
    env = {
        **os.environ,
        "MQVQ_HOME": str(tmp_path / "h"),
        "MQVQ_STUDIES": str(tmp_path / "studies"),
        "OMP_NUM_THREADS": "1",
    }
    p = subprocess.run(
        [sys.executable, "-m", "mqvq", "study", "run", "ddp", "--nproc", "2", "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).parent.parent,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "ddp (smoke): 1 finished" in p.stdout
    from mqvq.tracking import Tracker

    runs = Tracker(None, tmp_path / "h").find_runs("ddp/smoke")
    [row] = [r for r in runs if r.data.tags.get("mqvq.kind") == "row"]
    stages = {r.data.tags["mqvq.stage"]: r for r in runs if r.data.tags.get("mqvq.stage")}
    assert row.info.status == "FINISHED" and set(stages) == {"stage1", "stage2"}
    for run in stages.values():
        assert run.data.tags["mqvq.world_size"] == "2" and run.data.tags["mlflow.parentRunId"] == row.info.run_id
        assert run.data.tags["mqvq.row"] == "a" and run.info.status == "FINISHED"
    assert row.data.tags["mqvq.stage1_run"] == stages["stage1"].info.run_id


def test_sigusr2_stops_both_ranks_of_a_torchrun_row_at_one_step_and_the_resume_is_exact(tmp_path):
    """SLURM's `--signal=USR2@90` reaches every process of the job (here: the process group): the two
    ranks agree on one step, write the checkpoint, end the stage run KILLED with the reason, nothing
    is left running, and the rerun resumes the same run to the numbers of an uninterrupted one."""
    import signal
    import time

    import torch

    from mqvq.tracking import Tracker
    from tests.test_studies import write_study

    write_study(
        tmp_path / "studies",
        "ddp",
        [("a", "mqvae-f16-adaptive-25")],
        metrics='["usage"]',
        extra=["stage1.train.steps=40", "stage1.train.ckpt_every=4", "stage1.train.log_every=4"],
    )
    env = {**os.environ, "MQVQ_STUDIES": str(tmp_path / "studies"), "OMP_NUM_THREADS": "1"}
    root = Path(__file__).parent.parent

    def study(home, **kw):
        cmd = [
            sys.executable,
            "-m",
            "mqvq",
            "study",
            "run",
            "ddp",
            "--nproc",
            "2",
            "--no-progress",
            "--home",
            str(home),
        ]
        return subprocess.Popen(cmd, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)

    home = tmp_path / "h"
    job = study(home, start_new_session=True)  # a process group of its own, as a SLURM job step is
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(home.glob("checkpoints/*/last.pt")) and job.poll() is None:
        time.sleep(0.2)
    os.killpg(job.pid, signal.SIGUSR2)
    out, err = job.communicate(timeout=300)
    assert job.returncode == 130, err[-3000:]
    time.sleep(1.0)
    with pytest.raises(ProcessLookupError):  # no rank trains on as an orphan
        os.killpg(job.pid, 0)
    [stage1] = [r for r in Tracker(None, home).find_runs("ddp/smoke") if r.data.tags.get("mqvq.stage") == "stage1"]
    assert stage1.info.status == "KILLED", err[-3000:]
    reason = stage1.data.tags["mqvq.failure"]
    stopped = int(reason.rsplit(" ", 1)[1])
    assert reason == f"interrupted at step {stopped}" and 0 < stopped < 40
    [ckpt] = list(home.glob("checkpoints/*/last.pt"))
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved["step"] == stopped and len(saved["rng"]) == 2  # both ranks took part in the save

    again = study(home)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    ref = study(tmp_path / "ref")
    out, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err[-3000:]

    def numbers(h):
        runs = Tracker(None, h).find_runs("ddp/smoke")
        [s1] = [r for r in runs if r.data.tags.get("mqvq.stage") == "stage1"]
        [row] = [r for r in runs if r.data.tags.get("mqvq.kind") == "row"]
        return s1, {k: v for k, v in s1.data.metrics.items() if k.startswith("val/")} | {
            "usage": row.data.metrics["usage"]
        }

    resumed, mine = numbers(home)
    _, theirs = numbers(tmp_path / "ref")
    assert resumed.info.run_id == stage1.info.run_id and resumed.info.status == "FINISHED"
    assert int(resumed.data.tags["mqvq.resumed_from_step"]) == stopped
    assert len(mine) > 1 and mine == theirs
