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
