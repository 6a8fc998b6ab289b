"""A study, `sample`, `eval` and `train stage2 --stage1 STUDY:ROW` against a live MLflow tracking server
on 127.0.0.1 with proxied artifacts (what docs/cluster.md offers for several nodes): the runs and the
logged models go through the server, and mqvq prints paths that exist, or the model's URI."""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.test_studies import FAST, _free_port, write_study

pytestmark = pytest.mark.integration  # a server and whole studies

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def server(tmp_path):
    port = _free_port()
    srv = tmp_path / "server"
    srv.mkdir()
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{srv / 'mlflow.db'}",
            "--artifacts-destination",
            str(srv / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/health", timeout=2).read()
            break
        except OSError:
            assert p.poll() is None, "mlflow server exited"
            time.sleep(0.5)
    yield url, srv
    os.killpg(p.pid, signal.SIGTERM)
    p.wait(timeout=30)


def test_a_study_sample_and_eval_through_a_tracking_server(server, tmp_path):
    url, srv = server
    studies = tmp_path / "studies"
    write_study(studies, "srv", [("a", "mqvae-f16-adaptive-50")], metrics='["usage", "speed"]')
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": url,
        "MQVQ_HOME": str(tmp_path / "h"),
        "MQVQ_STUDIES": str(studies),
        "OMP_NUM_THREADS": "1",
    }

    def mqvq(*args, timeout=600):
        p = subprocess.run(
            [sys.executable, "-m", "mqvq", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
        assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
        assert (
            "View run" not in p.stdout and "View experiment" not in p.stdout
        )  # MLflow's own links, between mqvq's lines
        return p.stdout

    out = mqvq("study", "run", "srv", "--no-progress")
    assert "srv (smoke): 1 finished" in out
    assert "srv (smoke): 1 skipped" in mqvq("study", "run", "srv", "--no-progress")  # a rerun starts nothing
    assert list((srv / "artifacts").rglob("model.pt"))  # the weights went through the server's proxy
    samples = tmp_path / "samples"
    out = mqvq(
        "sample", "srv:a", "--num", "2", "--out", str(samples)
    )  # the row's stage-2 model, read through the server
    assert sorted(p.name for p in samples.glob("*.png")) == ["000000.png", "000001.png"]
    out = mqvq("eval", "srv:a", "--metrics", "usage", "--json")  # a stage-1 metric: the row's stage-1 run
    assert '"stage": "stage1"' in out
    out = mqvq(
        "train",
        "stage2",
        "mqvae-f16-adaptive-50",
        "--stage1",
        "srv:a",
        "--no-progress",  # the row's stage-1 model
        *[a for o in FAST for a in ("--set", o)],
        "--seed",
        "1",
    )
    model = out.split("model: ")[1].split()[0]
    assert model.startswith("models:/m-") or Path(model).is_file(), out  # never a temporary folder already deleted
