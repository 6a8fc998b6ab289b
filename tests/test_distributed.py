"""Multi-process DDP on CPU (gloo) through torchrun: the same command that runs on GPUs."""
import os
import subprocess
import sys
from pathlib import Path


def test_torchrun_two_processes(tmp_path):
    env = {**os.environ, "MQVQ_HOME": str(tmp_path / "h"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "mqvq", "train", "stage1",
           "mqvae-f16-adaptive-25", "--no-progress", "--set", "stage1.train.steps=4", "--set", "stage1.train.log_every=2",
           "--set", "stage1.loss.disc_start=2", "--set", "stage1.data.resolution=16"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parent.parent)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("finished stage-1 run") == 1  # only rank 0 reports
    from mqvq.tracking import Tracker

    run = Tracker(None, tmp_path / "h").find_runs("mqvae-f16-adaptive-25")[0]
    assert run.info.status == "FINISHED" and run.data.tags["mqvq.world_size"] == "2"
    assert run.data.metrics["train/images_per_s"] > 0
