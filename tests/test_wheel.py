"""mqvq installed as a user installs it (a wheel, not `pip install -e`): the declared experiments and
studies travel with it as package data, and from an empty folder it lists the studies, shows an
experiment and runs a smoke row."""

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # builds a wheel and runs a study row

ROOT = Path(__file__).resolve().parent.parent


def _setuptools_major() -> int:
    if importlib.util.find_spec("setuptools") is None:
        return 0
    return int(importlib.metadata.version("setuptools").split(".")[0])


def test_a_wheel_installed_without_e_finds_its_experiments_and_studies_and_runs_a_row(tmp_path):
    src = tmp_path / "src"
    for name in ("mqvq", "experiments", "studies", "pyproject.toml", "README.md"):  # what a wheel is built from
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(
            ROOT / name,
            src / name,
            **({"ignore": shutil.ignore_patterns("__pycache__")} if (ROOT / name).is_dir() else {}),
        )
    pip = [sys.executable, "-m", "pip"]
    # with a setuptools as new as pyproject asks, build with it; else pip fetches one (from the package registry)
    isolation = ["--no-build-isolation"] if _setuptools_major() >= 68 else []
    build = subprocess.run(
        [*pip, "wheel", "-q", "--no-deps", *isolation, "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    [wheel] = (tmp_path / "dist").glob("mqvq-*.whl")
    site = tmp_path / "site"
    install = subprocess.run(
        [*pip, "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MQVQ_STUDIES", "MQVQ_EXPERIMENTS")}
    env |= {"PYTHONPATH": str(site), "MQVQ_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}

    def mqvq(*args, timeout=120):
        p = subprocess.run(
            [sys.executable, "-m", "mqvq", *args], cwd=empty, env=env, capture_output=True, text=True, timeout=timeout
        )
        assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
        return p.stdout

    where = subprocess.run(
        [sys.executable, "-c", "import mqvq; print(mqvq.__file__)"], cwd=empty, env=env, capture_output=True, text=True
    ).stdout.strip()
    assert Path(where).is_relative_to(site)  # the installed copy, not this checkout
    assert "ablation-mask" in {s["name"] for s in json.loads(mqvq("study", "list", "--json"))["studies"]}
    assert '"mqvae-f16-adaptive-25"' in mqvq("experiment", "show", "mqvae-f16-adaptive-25", "--profile", "cpu")
    out = mqvq(
        "study", "run", "ablation-mask", "--profile", "smoke", "--only", "vqgan-f16", "--no-progress", timeout=600
    )
    assert "ablation-mask (smoke): 1 finished" in out
