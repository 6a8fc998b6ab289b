"""Damaged files a store can hold: one sentence naming the file, or a rebuild where the file is derived."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from mqvq.cli import app
from mqvq.errors import UserError
from mqvq.models.checkpoint import FORMAT, atomic_save, load_checkpoint

runner = CliRunner()


def _damaged(tmp_path):
    good = tmp_path / "good.pt"
    atomic_save({"format": FORMAT, "weights": torch.randn(4096)}, good)
    data = good.read_bytes()
    files = {"truncated": data[: len(data) // 2], "random bytes": bytes(range(256)) * 40, "empty": b""}
    out = {}
    for name, content in files.items():
        p = tmp_path / f"{name.replace(' ', '-')}.pt"
        p.write_bytes(content)
        out[name] = p
    return out


def test_a_broken_checkpoint_is_one_sentence_naming_it(tmp_path):
    for name, path in _damaged(tmp_path).items():
        try:
            load_checkpoint(path)
        except UserError as e:
            msg = str(e)
        else:
            raise AssertionError(f"{name} checkpoint was accepted")
        assert msg == f"{path} is truncated or is not an mqvq checkpoint.", (name, msg)


def test_sample_and_eval_refuse_a_broken_checkpoint_without_a_traceback(tmp_path):
    path = _damaged(tmp_path)["truncated"]
    for args in (["sample", str(path), "--num", "1", "--out", str(tmp_path / "s")], ["eval", str(path)]):
        r = runner.invoke(app, [*args, "--home", str(tmp_path / "home")])
        assert r.exit_code != 0 and "Traceback" not in r.output, r.output
        assert "is truncated or is not an mqvq checkpoint." in r.output and r.output.count(". ") == 0, r.output


def test_a_damaged_token_cache_is_rebuilt(tmp_path, tiny):
    from mqvq.data import build_dataset
    from mqvq.models.mqvae import MQVAE
    from mqvq.stages.tokenize import cached_tokens

    cfg = tiny()
    torch.manual_seed(0)
    model = MQVAE(cfg.stage1.model).eval()
    ckpt = tmp_path / "model.pt"
    atomic_save({"format": FORMAT}, ckpt)  # the cache key is the checkpoint file's digest
    ds = build_dataset(cfg.stage1.data, "test")
    first = cached_tokens(tmp_path, ckpt, model, ds, "test", 4, torch.device("cpu"), flip=False)
    (cache,) = (tmp_path / "tokens").glob("*.pt")
    for damage in (cache.read_bytes()[:100], b"", b"not a torch file"):
        cache.write_bytes(damage)
        again = cached_tokens(tmp_path, ckpt, model, ds, "test", 4, torch.device("cpu"), flip=False)
        assert torch.equal(again.codes, first.codes) and torch.equal(again.positions, first.positions)
        assert cache.stat().st_size > 100  # rewritten whole


def test_ui_refuses_a_taken_port_and_an_impossible_one(home):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = runner.invoke(app, ["ui", "--port", str(port), "--home", str(home)])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert f"port {port} on 127.0.0.1 is already in use: choose another with --port." in r.output
    assert "http://" not in r.output  # no URL that would show whatever else listens there
    r = runner.invoke(app, ["ui", "--port", "70000", "--home", str(home)])
    assert r.exit_code != 0 and "Traceback" not in r.output and "--port" in r.output and "65535" in r.output
    with socket.socket() as taken:  # serving to the network without a password is said, before anything starts
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = runner.invoke(app, ["ui", "--host", "0.0.0.0", "--port", str(port), "--home", str(home)])
    said = " ".join(r.output.split())
    assert r.exit_code != 0 and "anyone there can read and delete runs. Pass --auth to require one." in said


def test_read_only_commands_refuse_a_store_that_is_not_there(tmp_path, monkeypatch):
    """A mistyped store must not be created empty and reported as 'every row missing'."""
    missing = tmp_path / "no" / "such" / "x.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{missing}")
    for args in (
        ["study", "status", "ablation-mask"],
        ["study", "plan", "ablation-mask"],
        ["report", "ablation-mask"],
        ["search", "status", "vqgan-f16"],
        ["ui"],
    ):
        r = runner.invoke(app, args)
        assert r.exit_code != 0 and "Traceback" not in r.output, (args, r.output)
        assert f"there is no tracking store at {missing}" in r.output, (args, r.output)
    assert not (tmp_path / "no").exists()
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    r = runner.invoke(app, ["study", "status", "ablation-mask", "--home", str(tmp_path / "typo")])
    assert r.exit_code != 0 and not (tmp_path / "typo").exists()


def test_a_command_that_writes_says_once_that_it_created_the_store(tmp_path):
    import io

    from rich.console import Console

    import mqvq.cli.common as common
    from mqvq.cli.common import open_tracker

    buf = io.StringIO()
    common.err_console, saved = Console(file=buf, width=200), common.err_console
    try:
        open_tracker(None, str(tmp_path / "new"))
        open_tracker(None, str(tmp_path / "new"))
    finally:
        common.err_console = saved
    assert buf.getvalue().count("created a new tracking store at sqlite:///") == 1


def test_written_files_get_the_usual_umask_modes(tmp_path):
    import os

    from mqvq.files import atomic_write

    old = os.umask(0o022)
    try:
        p = atomic_write(tmp_path / "report.md", lambda f: f.write(b"x"))
        assert (p.stat().st_mode & 0o777) == 0o644
        os.umask(0o077)
        q = atomic_write(tmp_path / "private.md", lambda f: f.write(b"x"))
        assert (q.stat().st_mode & 0o777) == 0o600
    finally:
        os.umask(old)


def test_an_atomic_write_never_touches_the_process_umask(tmp_path, monkeypatch):
    """Reading the umask means setting it: for that moment every other thread (a heartbeat, MLflow's
    system-metrics sampler) would create world-writable files."""
    import os

    from mqvq.files import atomic_write

    def umask(mask):
        raise AssertionError(f"os.umask({mask:o}) called")

    monkeypatch.setattr(os, "umask", umask)
    p = atomic_write(tmp_path / "a.json", lambda f: f.write(b"{}"))
    assert p.read_bytes() == b"{}" and [x.name for x in tmp_path.iterdir()] == ["a.json"]


def test_undecodable_images_are_named_before_anything_is_written(tmp_path, home, tracker):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(8):
        Image.new("RGB", (20, 20), (i * 30, 0, 0)).save(folder / f"{i:02d}.png")
    (folder / "03b.png").write_bytes(b"")  # zero bytes
    (folder / "05b.png").write_text("this is a text file\n")  # not an image at all
    sets = [
        "--set",
        "stage1.data.name=folder",
        "--set",
        f"stage1.data.root={folder}",
        "--set",
        "stage1.data.layout=ffhq",
        "--set",
        "stage1.data.test_fraction=0.2",
    ]
    r = runner.invoke(app, ["data", "show", "vqgan-f16", "--profile", "smoke", *sets])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "2 of 8 images" in r.output and "03b.png" in r.output and "05b.png" in r.output, r.output
    r = runner.invoke(
        app, ["train", "stage1", "vqgan-f16", "--profile", "smoke", *sets, "--home", str(home), "--no-progress"]
    )
    assert r.exit_code != 0 and "cannot be decoded" in r.output, r.output
    assert tracker.find_runs("vqgan-f16") == []  # no FAILED run left behind


def test_a_copied_or_moved_store_writes_and_reads_its_own_artifacts(tmp_path, home):
    import json
    import shutil

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mqvq.tracking import Tracker

    original = Tracker(None, home)
    run = original.start_run("e", "r", {"mqvq.stage": "stage1"})
    original.log_dict(run, {"v": 1}, "metrics/a.json")
    copy = tmp_path / "copy"
    shutil.copytree(home, copy)
    t = Tracker(None, copy)
    t.log_dict(run, {"v": 2}, "metrics/a.json")
    t.log_figure(run, plt.figure(), "figures/f.png")
    assert json.loads(t.download_artifact(run, "metrics/a.json", tmp_path / "dl").read_text()) == {"v": 2}
    assert json.loads(original.download_artifact(run, "metrics/a.json", tmp_path / "dl2").read_text()) == {"v": 1}
    assert not list(home.rglob("f.png")) and list(copy.rglob("f.png"))  # the original store is untouched
    moved = tmp_path / "moved"
    shutil.move(str(copy), moved)
    m = Tracker(None, moved)
    m.log_dict(run, {"v": 3}, "metrics/b.json")
    assert not copy.exists()  # the old folder is not re-created
    assert json.loads(m.download_artifact(run, "metrics/b.json", tmp_path / "dl3").read_text()) == {"v": 3}


def test_outputs_through_a_file_and_impossible_devices_are_one_sentence(tmp_path, home):
    from mqvq.files import atomic_write

    (tmp_path / "afile").write_text("x")
    try:
        atomic_write(tmp_path / "afile" / "x.json", lambda f: f.write(b"{}"), "; choose a writable --out")
    except UserError as e:
        assert (
            str(e)
            == f"cannot write {tmp_path / 'afile' / 'x.json'}: {tmp_path / 'afile'} is a file, not a folder; choose a writable --out."
        )
    else:
        raise AssertionError("wrote through a file")
    r = runner.invoke(app, ["study", "run", "ablation-mask", "--device", "tpu", "--home", str(home)])
    assert r.exit_code == 2 and "--device 'tpu' is invalid: use cpu, cuda or cuda:N." in r.output
