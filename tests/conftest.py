"""Shared fixtures: random-but-real-format LPIPS weights, a pre-migrated MLflow store, tiny configs.

Tests never need the 59 MB LPIPS file or a network: a randomly initialised LPIPS-VGG16 state
dict is written once per session and MQVQ_WEIGHTS_DIR points at it, so the real loading path
(file lookup, key and shape checks) runs in every training test.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory) -> Path:
    from mqvq.models.lpips import LPIPS

    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    for net in ("vgg", "alex"):
        torch.save(LPIPS(net).state_dict(), d / f"lpips_{net}.pth")
    return d


@pytest.fixture(autouse=True)
def _isolated_env(weights_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("MQVQ_WEIGHTS_DIR", str(weights_dir))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MQVQ_HOME", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("MQVQ_OFFLINE", "1")  # no test reaches a real host; the download tests serve on 127.0.0.1
    monkeypatch.delenv("MQVQ_WEIGHTS_MIRROR", raising=False)
    monkeypatch.delenv("MQVQ_SYSTEM_METRICS", raising=False)  # `--no-system-metrics` run in-process sets it


@pytest.fixture(scope="session")
def _store_template(tmp_path_factory) -> Path:
    """One migrated SQLite store per session; creating one costs ~2 s."""
    from mqvq.tracking import Tracker

    d = tmp_path_factory.mktemp("store")
    Tracker(None, d)
    return d / "mlflow.db"


@pytest.fixture
def home(tmp_path, _store_template) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    shutil.copy(_store_template, h / "mlflow.db")
    return h


@pytest.fixture
def studies(tmp_path, monkeypatch):
    """A studies folder of this test's own (`MQVQ_STUDIES`), for `tests.test_studies.write_study`."""
    folder = tmp_path / "studies"
    monkeypatch.setenv("MQVQ_STUDIES", str(folder))
    return folder


@pytest.fixture
def tracker(home):
    from mqvq.tracking import Tracker

    return Tracker(None, home)


TINY = [
    "stage1.data.resolution=16",
    "stage1.data.num_train=32",
    "stage1.data.num_test=8",
    "stage1.model.channels=8",
    "stage1.model.z_channels=8",
    "stage1.model.mask.scorer_hidden=8",
    "stage1.model.demask.layers=2",
    "stage1.model.quantizer.codebook_size=16",
    "stage1.model.quantizer.dim=8",
    "stage1.loss.disc_layers=1",
    "stage1.loss.disc_channels=8",
    "stage1.train.steps=6",
    "stage1.train.batch_size=4",
    "stage1.train.log_every=2",
    "stage1.train.eval_images=8",
    "stage1.train.warmup_steps=0",
    "stage1.loss.disc_start=2",
]


# stage 2 and evaluation at the tiny size: what the session's trained row uses (eval.* is in no run's identity)
TINY_S2 = [
    "stage2.train.steps=4",
    "stage2.train.batch_size=8",
    "stage2.train.log_every=2",
    "stage2.train.val_every=2",
    "stage2.sampling.batch_size=8",
    "eval.num_samples=8",
    "eval.batch_size=8",
    "eval.speed_batch_size=4",
]


@pytest.fixture(scope="session")
def _trained_template(tmp_path_factory, weights_dir, _store_template):
    """Both stages of one tiny row (MQ-VAE, 50 % adaptive mask), trained once per session in a home of
    its own; `trained` gives each test a copy (a copied home reads and writes its own artifacts)."""
    from mqvq.experiments import load_experiment
    from mqvq.stages.train_stage1 import train_stage1
    from mqvq.stages.train_stage2 import train_stage2
    from mqvq.tracking import Tracker

    home = tmp_path_factory.mktemp("trained") / "home"
    home.mkdir()
    shutil.copy(_store_template, home / "mlflow.db")
    with pytest.MonkeyPatch.context() as mp:  # what `_isolated_env` sets for a test
        mp.setenv("MQVQ_WEIGHTS_DIR", str(weights_dir))
        mp.setenv("MQVQ_OFFLINE", "1")
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("MQVQ_HOME", raising=False)
        tracker = Tracker(None, home)
        cfg = load_experiment("mqvae-f16-adaptive-50", "smoke", [*TINY, *TINY_S2], 0)
        s1 = train_stage1(cfg, tracker, progress=False)["run_id"]
        s2 = train_stage2(cfg, tracker, progress=False)["run_id"]
    return home, s1, s2


@pytest.fixture
def trained(home, _trained_template) -> tuple[str, str]:
    """(stage-1 run id, stage-2 run id) of the session's trained row, in this test's own copy of its home.
    Request it before `tracker`, which then opens the copy."""
    src, s1, s2 = _trained_template
    shutil.rmtree(home)
    shutil.copytree(src, home)
    return s1, s2


@pytest.fixture
def tiny():
    """Resolve an experiment at the smoke profile shrunk to 16x16 images (f = 4 -> 4x4 grid)."""
    from mqvq.experiments import load_experiment

    def make(name: str = "mqvae-f16-adaptive-50", *extra: str, seed: int = 0):
        return load_experiment(name, "smoke", [*TINY, *extra], seed)

    return make


# --------------------------------------------------------------------------- a throwaway PostgreSQL
def _bin(name: str) -> str | None:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    return found


@pytest.fixture(scope="session")
def postgres_url():
    pytest.importorskip("psycopg2", reason='the PostgreSQL driver is not installed: pip install "mqvq[postgres]"')
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("no PostgreSQL server binaries (Debian: apt-get install postgresql)")
    import tempfile
    from pathlib import Path

    base = Path(tempfile.mkdtemp(prefix="mqvq-pg-"))  # not under pytest's 0700 root-owned folder
    data = base / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: use the package's postgres user
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser: cannot start PostgreSQL")
        as_user = ["runuser", "-u", "postgres", "--"]
        base.chmod(0o777)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        subprocess.run(
            [*as_user, initdb, "-D", str(data), "-U", "mqvq", "--auth=trust"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        subprocess.run(
            [
                *as_user,
                pg_ctl,
                "-D",
                str(data),
                "-l",
                str(data.parent / "log"),
                "-w",
                "-o",
                f"-p {port} -k {data.parent} -c listen_addresses=127.0.0.1",
                "start",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"PostgreSQL could not be started here: {getattr(e, 'stderr', b'') or e}")
    try:
        subprocess.run(
            [*as_user, _bin("createdb") or "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "mqvq", "mlflow"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        subprocess.run(
            [*as_user, _bin("createdb") or "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "mqvq", "optuna"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield f"postgresql://mqvq@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)
