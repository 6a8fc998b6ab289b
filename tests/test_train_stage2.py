"""Stage 2 end to end on CPU: tokens cached per checkpoint, MLflow run linked to stage 1, resume, sample."""

import json

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mqvq.cli import app
from mqvq.errors import UserError
from mqvq.models.checkpoint import load_checkpoint
from mqvq.stages.tokenize import TokenSet
from mqvq.stages.train_stage1 import train_stage1
from mqvq.stages.train_stage2 import load_stackformer, train_stage2
from tests.conftest import TINY

S2 = [
    "stage2.train.steps=6",
    "stage2.train.batch_size=8",
    "stage2.train.log_every=2",
    "stage2.train.val_every=3",
    "stage2.sampling.batch_size=8",
]
runner = CliRunner()


@pytest.fixture
def stage1_run(tiny, tracker):
    def make(name="mqvae-f16-adaptive-50", *extra):
        cfg = tiny(name, *S2, *extra)
        return cfg, train_stage1(cfg, tracker, progress=False)

    return make


def test_stage2_trains_on_its_stage1_run_and_reuses_tokens(stage1_run, tracker):
    cfg, s1 = stage1_run()
    r = train_stage2(cfg, tracker, progress=False)  # finds the finished stage-1 run by config hash
    run = tracker.get_run(r["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["mqvq.stage1_run"] == s1["run_id"]
    for key in ("train/loss", "train/code_loss", "train/position_loss", "train/tokens_per_s", "val/loss"):
        assert key in run.data.metrics, key
    assert run.data.params["tokens_per_image"] == "8" and run.data.params["grid"] == "4x4"
    model, ckpt = load_stackformer(r["model"])
    assert model.shape.length == 8 and ckpt["stage1"]["run_id"] == s1["run_id"]
    token_files = list((tracker.home / "tokens").glob("*.pt"))
    assert len(token_files) == 2  # train (with flips) and test, computed once
    train_file = max(token_files, key=lambda p: p.stat().st_size)
    d = torch.load(train_file, weights_only=True)
    assert d["codes"].shape == (2 * 32, 8)  # 32 images + their mirror images
    mtimes = {p: p.stat().st_mtime_ns for p in token_files}
    train_stage2(cfg, tracker, stage1=s1["run_id"], progress=False, mlflow_experiment="again")
    assert {p: p.stat().st_mtime_ns for p in (tracker.home / "tokens").glob("*.pt")} == mtimes  # reused


def test_stage2_resume_is_exact(stage1_run, tracker):
    cfg, _ = stage1_run("mqvae-f16-random-25")
    full = train_stage2(cfg, tracker, progress=False)
    part = train_stage2(
        cfg, tracker, stage1=full["stage1"]["run_id"], progress=False, mlflow_experiment="b", stop_after=4
    )
    assert not part["finished"]
    done = train_stage2(
        cfg, tracker, stage1=full["stage1"]["run_id"], progress=False, mlflow_experiment="b", resume=True
    )
    assert done["run_id"] == part["run_id"]
    a, b = load_checkpoint(full["checkpoint"])["model"], load_checkpoint(done["checkpoint"])["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_raster_baseline_and_class_conditioning(stage1_run, tracker):
    cfg, _ = stage1_run("vqgan-f16", "stage2.model.conditioning='class'")
    r = train_stage2(cfg, tracker, progress=False)
    model, _ = load_stackformer(r["model"])
    assert model.raster and model.shape.length == 16 and model.shape.num_classes == 4  # procedural: 4 shape classes


def test_stage2_input_errors(stage1_run, tracker, tiny):
    cfg, s1 = stage1_run("mqvae-f16-adaptive-50")
    with pytest.raises(UserError, match="neither a checkpoint file nor an MLflow run id"):
        train_stage2(cfg, tracker, stage1="0123456789abcdef", progress=False)
    other = tiny("mqvae-f16-adaptive-25", *S2)
    with pytest.raises(UserError, match="stage1.model.mask.ratio = 0.5.*declares 0.25"):
        train_stage2(other, tracker, stage1=s1["run_id"], progress=False)
    bigger = tiny("mqvae-f16-adaptive-50", *S2, "stage1.model.quantizer.codebook_size=32")
    with pytest.raises(UserError, match="codebook_size"):
        train_stage2(bigger, tracker, stage1=s1["model"], progress=False)
    with pytest.raises(UserError, match="no finished stage-1 run"):
        train_stage2(tiny("mqvae-f16-adaptive-75", *S2), tracker, progress=False)
    # the selector chooses the kept tokens: a stage-2 run must not record one it did not read
    damage = tiny("mqvae-f16-adaptive-50", *S2, "stage1.model.mask.selector=damage")
    with pytest.raises(UserError, match="stage1.model.mask.selector = 'gain', but .* declares 'damage'"):
        train_stage2(damage, tracker, stage1=s1["run_id"], progress=False)
    from mqvq.stages.lookup import check_compatible, resolve

    ref = resolve(tracker, s1["run_id"])
    del ref.config["stage1"]["model"]["mask"]["selector"]  # a checkpoint older than the selector: it used the gain
    check_compatible(ref, cfg)
    with pytest.raises(UserError, match="selector = 'gain'"):
        check_compatible(ref, damage)
    with pytest.raises(UserError, match="captions name left and right"):
        tiny("mqvae-f16-adaptive-50", "stage2.model.conditioning='text'")  # procedural captions with flipped copies
    with pytest.raises(UserError, match="needs captions, which fashion-mnist has none of"):
        tiny(
            "mqvae-f16-adaptive-50",
            "stage2.model.conditioning='text'",
            "stage2.train.flip=false",
            "stage1.data.name='fashion-mnist'",
            "stage1.data.resolution=32",
        )
    with pytest.raises(UserError, match="cfg_scale = 2.0 needs a model trained with condition dropout"):
        tiny("mqvae-f16-adaptive-50", "stage2.model.conditioning='class'", "stage2.sampling.cfg_scale=2.0")
    with pytest.raises(UserError, match="cond_dropout = 0.1 needs a condition to drop"):
        tiny("mqvae-f16-adaptive-50", "stage2.train.cond_dropout=0.1")
    with pytest.raises(UserError, match="needs a stage 1 without a mask"):
        tiny("mqvae-f16-adaptive-50", "stage2.model.kind='raster'")


@pytest.mark.integration
def test_sample_cli_writes_valid_images(stage1_run, tracker, tmp_path):
    cfg, _ = stage1_run()
    r = train_stage2(cfg, tracker, progress=False)
    out = tmp_path / "samples"
    res = runner.invoke(
        app,
        [
            "sample",
            r["run_id"],
            "--num",
            "10",
            "--batch-size",
            "4",
            "--out",
            str(out),
            "--npz",
            "--home",
            str(tracker.home),
            "--no-progress",
            "--top-k",
            "5",
            "--top-p-pos",
            "0.9",
        ],
    )
    assert res.exit_code == 0, res.output
    files = sorted(out.glob("*.png"))
    assert len(files) == 10
    for f in files:
        with Image.open(f) as im:
            assert im.size == (16, 16) and im.mode == "RGB"
    import numpy as np

    data = np.load(out / "samples.npz")
    assert data["images"].shape == (10, 16, 16, 3) and data["positions"].shape == (10, 8)
    assert all(len(set(p)) == 8 for p in data["positions"].tolist())
    for args, msg in [
        (["--top-k", "0"], "--top-k = 0 must be at least 1"),
        (["--top-p", "0"], "--top-p = 0.0 must lie in (0, 1]"),
        (["--top-p-pos", "1.5"], "--top-p-pos = 1.5"),
        (["--steps", "17"], "--steps 17 is invalid"),
        ([], "already holds samples"),
    ]:
        res = runner.invoke(
            app, ["sample", r["run_id"], "--num", "2", "--out", str(out), "--home", str(tracker.home), *args]
        )
        assert res.exit_code == 2 and msg in res.output and "Traceback" not in res.output, (args, res.output)
    res = runner.invoke(
        app, ["sample", "feedbeef", "--num", "2", "--out", str(tmp_path / "x"), "--home", str(tracker.home)]
    )
    assert res.exit_code == 2 and "neither a checkpoint file nor an MLflow run id" in res.output


def test_train_stage2_cli_and_unknown_stage1(stage1_run, tracker):
    cfg, s1 = stage1_run()
    sets = [a for s in [*TINY, *S2] for a in ("--set", s)]
    res = runner.invoke(
        app,
        [
            "train",
            "stage2",
            "mqvae-f16-adaptive-50",
            "--stage1",
            s1["run_id"],
            "--home",
            str(tracker.home),
            "--no-progress",
            *sets,
        ],
    )
    assert res.exit_code == 0, res.output
    assert f"on stage-1 run {s1['run_id']}" in res.output
    res = runner.invoke(
        app, ["train", "stage2", "mqvae-f16-adaptive-50", "--stage1", "nope.pt", "--home", str(tracker.home), *sets]
    )
    assert res.exit_code == 2 and "checkpoint nope.pt does not exist" in res.output


def test_bench_sample_reports_both_models_and_cache_modes():
    res = runner.invoke(
        app,
        [
            "bench",
            "sample",
            "--preset",
            "tiny",
            "--grid",
            "4",
            "--batch-size",
            "2",
            "--repeats",
            "1",
            "--device",
            "cpu",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    import json

    data = json.loads(res.stdout)
    assert {(r["model"], r["mask_ratio"], r["cache"]) for r in data["rows"]} == {
        (m, r, c) for m, r in (("raster", 0.0), ("stackformer", 0.25), ("stackformer", 0.5)) for c in (True, False)
    }
    assert data["sample_images_per_s"] > 0 and data["sample_speedup_50_vs_0"] > 0 and data["environment"]["torch"]


def test_token_set_len():
    assert len(TokenSet(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3), (2, 2), 4, torch.arange(3))) == 3


TEXT = ["stage2.model.conditioning='text'", "stage2.train.flip=false", "stage2.model.text_length=16"]


@pytest.mark.integration
def test_text_conditional_stage2_sample_and_eval(stage1_run, tracker, tmp_path):
    """Procedural captions -> a tokenizer in the checkpoint; `sample --prompt` writes each prompt beside its image."""
    from mqvq.stages.evaluate import evaluate_run
    from mqvq.stages.train_stage2 import load_tokenizer

    cfg, _ = stage1_run(
        "mqvae-f16-adaptive-50", *TEXT, "stage2.train.cond_dropout=0.2", "eval.num_samples=8", "eval.backend='vgg16'"
    )
    r = train_stage2(cfg, tracker, progress=False)
    model, ckpt = load_stackformer(r["model"])
    tok = load_tokenizer(ckpt)
    assert tok is not None and model.shape.text_vocab == tok.size and model.shape.text_length == 16
    assert {"red", "circle", "background"} <= set(tok.vocab) and model.prefix_len == 16
    home = ["--home", str(tracker.home), "--no-progress"]
    out = tmp_path / "a"
    res = runner.invoke(
        app, ["sample", r["run_id"], "--num", "4", "--out", str(out), "--prompt", "a red circle", *home]
    )
    assert res.exit_code == 0, res.output
    assert len(list(out.glob("*.png"))) == 4 and (out / "000003.txt").read_text() == "a red circle\n"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a blue face at the left on a plain background\n\na zebra triangle\n")
    res = runner.invoke(
        app,
        [
            "sample",
            r["run_id"],
            "--num",
            "3",
            "--out",
            str(tmp_path / "b"),
            "--prompts",
            str(prompts),
            "--cfg-scale",
            "3",
            *home,
        ],
    )
    assert res.exit_code == 0, res.output
    assert "read as <unk>: zebra" in res.output
    assert [
        (tmp_path / "b" / f"00000{i}.txt").read_text() for i in range(3)
    ] == [  # what the model read, when not all of it
        "a blue face at the left on a plain background\n",
        "prompt: a zebra triangle\nread as: a <unk> triangle\n",
        "a blue face at the left on a plain background\n",
    ]
    assert json.loads((tmp_path / "b" / "sampling.json").read_text())["prompts"] == [
        "a blue face at the left on a plain background",
        "a zebra triangle",
    ]
    for args, msg in [
        (["--prompt", "  "], "is empty"),
        (["--prompt", "?!"], "is empty"),
        ([], "this model is text-conditional"),
        (["--prompts", str(tmp_path / "nope.txt")], "no such file"),
        (["--prompt", "x", "--cfg-scale", "-1"], "--cfg-scale = -1.0 must lie in [0, 100]"),
        (["--prompt", "x", "--cfg-scale", "1e9"], "--cfg-scale = 1000000000.0 must lie in [0, 100]"),
    ]:
        res = runner.invoke(app, ["sample", r["run_id"], "--num", "2", "--out", str(tmp_path / "c"), *home, *args])
        assert res.exit_code == 2 and msg in res.output and "Traceback" not in res.output, (args, res.output)
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").iterdir())  # nothing written on a refusal
    # eval samples with the test split's captions; the guided twin of each metric comes with condition dropout
    got = evaluate_run(tracker, r["run_id"], ["fid", "attr"], progress=False)["metrics"]
    for key in (
        "fd_vgg16",
        "fd_vgg16_cfg",
        "attr_acc",
        "attr_acc_cfg",
        "attr_acc_real",
        "attr_acc_chance",
        "attr_colour",
    ):
        assert key in got, key
    assert 0 <= got["attr_acc"] <= 100


@pytest.mark.integration
def test_prompts_and_guidance_are_refused_where_they_do_not_apply(stage1_run, tracker, tmp_path):
    cfg, _ = stage1_run("mqvae-f16-adaptive-50", "stage2.model.conditioning='class'")
    r = train_stage2(cfg, tracker, progress=False)
    home = ["--home", str(tracker.home), "--no-progress"]
    for args, msg in [
        (["--prompt", "a red circle"], "--prompt needs a text-conditional model; this one is class-conditional"),
        (["--cfg-scale", "2"], "needs a model trained with condition dropout"),
    ]:
        res = runner.invoke(app, ["sample", r["run_id"], "--num", "2", "--out", str(tmp_path / "x"), *home, *args])
        assert res.exit_code == 2 and msg in res.output and "Traceback" not in res.output, (args, res.output)
    res = runner.invoke(app, ["eval", r["run_id"], "--metrics", "attr", *home])
    assert res.exit_code == 2 and "needs a text-conditional model trained on procedural data" in res.output
    res = runner.invoke(app, ["eval", r["run_id"], "--metrics", "speed", "--cfg-scale", "2", *home])
    assert res.exit_code == 2 and "needs a model trained with condition dropout" in res.output
    res = runner.invoke(app, ["search", "sampling", r["run_id"], "--trials", "1", "--cfg-scale", "1:3", *home])
    assert res.exit_code == 2 and "trained without condition dropout" in res.output
    cfg, _ = stage1_run("mqvae-f16-adaptive-25")
    r = train_stage2(cfg, tracker, progress=False)
    res = runner.invoke(
        app, ["sample", r["run_id"], "--num", "2", "--out", str(tmp_path / "y"), "--prompt", "a", *home]
    )
    assert res.exit_code == 2 and "this one is unconditional" in res.output
    res = runner.invoke(app, ["eval", r["run_id"], "--metrics", "attr", *home])
    assert res.exit_code == 2 and "this run is an unconditional model" in res.output
    res = runner.invoke(app, ["search", "sampling", r["run_id"], "--trials", "1", "--cfg-scale", "1:3", *home])
    assert (
        res.exit_code == 2 and "is unconditional, and guidance steers a class- or text-conditional model" in res.output
    )
    res = runner.invoke(app, ["eval", r["run_id"], "--metrics", "speed", "--cfg-scale", "-1", *home])
    assert (
        res.exit_code == 2 and "--cfg-scale = -1.0 must lie in [0, 100]" in res.output and "cfg_scale" not in res.output
    )


@pytest.mark.integration
def test_prompts_as_people_write_them(stage1_run, tracker, tmp_path, monkeypatch):
    """Odd prompt input is read, stored and shown sensibly, and a sample is written whole or not at all."""
    cfg, _ = stage1_run("mqvae-f16-adaptive-50", *TEXT)
    r = train_stage2(cfg, tracker, progress=False)
    home = ["--home", str(tracker.home), "--no-progress"]

    def sample(out, *args):
        return runner.invoke(app, ["sample", r["run_id"], "--out", str(tmp_path / out), *home, *args])

    # bytes that are not UTF-8 (the shell's $'\xff\xfe', which Python hands over as surrogates)
    res = sample("bytes", "--num", "2", "--prompt", "a red circle \udcff\udcfe at the top")
    assert res.exit_code == 0, res.output
    assert "\ufffd\ufffd" in (tmp_path / "bytes" / "000000.txt").read_text(encoding="utf-8")
    assert sorted(f.name for f in (tmp_path / "bytes").iterdir()) == [
        "000000.png",
        "000000.txt",
        "000001.png",
        "000001.txt",
        "sampling.json",
    ]
    # a byte-order mark is not a word; a control character is never echoed; thousands of unknown words, two used
    lines = ["\ufeffa red circle"] + [f"a zq{i:04d} triangle" for i in range(3000)]
    (tmp_path / "p.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    res = sample("many", "--num", "2", "--prompts", str(tmp_path / "p.txt"))
    assert res.exit_code == 0, res.output
    assert "read as <unk>: zq0000" in res.output and "and" not in res.output.split("<unk>:")[1].split("\n")[0]
    assert (tmp_path / "many" / "000000.txt").read_text() == "a red circle\n"
    assert json.loads((tmp_path / "many" / "sampling.json").read_text())["prompts"] == [
        "a red circle",
        "a zq0000 triangle",
    ]
    assert json.loads((tmp_path / "many" / "sampling.json").read_text())["prompts_given"] == 3001
    res = sample("unknown", "--num", "40", "--batch-size", "40", "--prompts", str(tmp_path / "p.txt"))
    assert res.exit_code == 0 and len(res.output) < 600 and "and 27 more" in res.output, res.output
    res = sample("ctrl", "--num", "1", "--prompt", "a red\x1b[31m circle\x07")
    assert res.exit_code == 0 and "\x1b" not in res.output and "\x07" not in res.output
    assert "\x1b" not in (tmp_path / "ctrl" / "000000.txt").read_text()
    # a 5,000-word prompt: the .txt says what the model read, not the whole prompt
    res = sample("long", "--num", "1", "--prompt", " ".join(["red"] * 5000))
    text = (tmp_path / "long" / "000000.txt").read_text()
    assert (
        res.exit_code == 0
        and text.startswith("prompt: ")
        and "read as: " + " ".join(["red"] * 16) in text
        and len(text) < 1000
    )
    # all or nothing per image: a write that fails leaves the images before it, none half-written
    import mqvq.stages.generate as G

    real, seen = G.os.replace, []

    def replace(src, dst):
        seen.append(dst)
        if str(dst).endswith("000001.txt"):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(G.os, "replace", replace)
    res = sample("full", "--num", "3", "--prompt", "a red circle")
    assert res.exit_code == 2 and "cannot write" in res.output and "No space left on device" in res.output, res.output
    assert "Traceback" not in res.output
    assert sorted(f.name for f in (tmp_path / "full").iterdir()) == ["000000.png", "000000.txt"]
    monkeypatch.setattr(G.os, "replace", real)
    res = sample("full", "--num", "3", "--prompt", "a red circle", "--overwrite")
    assert res.exit_code == 0 and len(list((tmp_path / "full").glob("*.png"))) == 3
