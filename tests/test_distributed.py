"""Multi-process DDP on CPU (gloo) through torchrun: the same command that runs on GPUs."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # several processes


def test_torchrun_two_processes_both_stages(tmp_path):
    env = {**os.environ, "MQVQ_HOME": str(tmp_path / "h"), "OMP_NUM_THREADS": "1"}
    sets = ["--set", "stage1.train.steps=4", "--set", "stage1.train.log_every=2", "--set", "stage1.loss.disc_start=2",
            "--set", "stage1.data.resolution=16", "--set", "stage2.train.steps=4", "--set", "stage2.train.log_every=2"]
    for stage in ("stage1", "stage2"):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "mqvq", "train", stage,
               "mqvae-f16-adaptive-25", "--no-progress", *sets]
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
    env = {**os.environ, "MQVQ_HOME": str(tmp_path / "h"), "MQVQ_STUDIES": str(tmp_path / "studies"), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "mqvq", "study", "run", "ddp", "--nproc", "2", "--no-progress"], env=env,
                       capture_output=True, text=True, timeout=600, cwd=Path(__file__).parent.parent)
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
