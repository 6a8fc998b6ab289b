"""Datasets: deterministic procedural data, Fashion-MNIST, user folders, resumable batch order."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mqvq.config import DataConfig
from mqvq.data import StepSampler, build_dataset, eval_batches
from mqvq.data.datasets import FASHION_MNIST_DIR
from mqvq.data.procedural import render_many
from mqvq.errors import UserError


@pytest.mark.parametrize("res", [8, 16, 64])
def test_procedural_same_seed_same_bytes(res):
    a = render_many(7, 0, 6, res)
    b = render_many(7, 0, 6, res)
    c = render_many(8, 0, 6, res)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    imgs, fg, labels = a
    assert imgs.shape == (6, 3, res, res) and imgs.dtype == np.uint8 and fg.shape == (6, res, res)
    assert set(labels.tolist()) <= {0, 1, 2, 3}


def test_procedural_captions_say_what_was_drawn():
    """Captions and attributes come from the same draws as the image; adding them changed no pixel."""
    import hashlib

    from mqvq.data.procedural import ATTRIBUTES, caption, colour_name, place_of

    a = render_many(0, 0, 64, 32)
    assert (
        hashlib.sha256(b"".join(x.tobytes() for x in a)).hexdigest()[:16] == "322f37b8fa6d5eda"
    )  # the bytes before captions
    ds = build_dataset(DataConfig(name="procedural", resolution=32, num_train=64, num_test=8, limit_train=50), "train")
    assert len(ds.caption_list) == len(ds) == 50 and all(len(v) == 50 for v in ds.attributes.values())
    assert torch.equal(
        ds.attributes["kind"], ds.labels
    )  # the caption names the largest object, whose kind is the label
    for i in range(50):
        attrs = {k: int(v[i]) for k, v in ds.attributes.items()}
        text = ds.caption_list[i]
        assert text == caption(attrs) and ATTRIBUTES["colour"][attrs["colour"]] in text.split()
        assert f"on a {ATTRIBUTES['background'][attrs['background']]} background" in text
    assert ATTRIBUTES["colour"][colour_name(np.array([1.0, 0.1, 0.1]))] == "red"
    assert ATTRIBUTES["colour"][colour_name(np.array([0.9, 0.9, 0.85]))] == "white"
    assert (
        ATTRIBUTES["place"][place_of(-0.5, -0.5)] == "top left" and ATTRIBUTES["place"][place_of(0.0, 0.6)] == "bottom"
    )
    assert (
        len(
            set(
                build_dataset(
                    DataConfig(name="procedural", resolution=16, num_train=8, num_test=400), "test"
                ).caption_list
            )
        )
        > 200
    )


def test_procedural_foreground_is_the_object_not_the_background():
    imgs, fg, _ = render_many(0, 0, 32, 64)
    frac = fg.mean(axis=(1, 2))
    assert (frac > 0.02).all() and (frac < 0.9).all()
    # background is redundant: far lower pixel variance than the foreground objects' edges
    x = imgs.astype(np.float32)
    grad = np.abs(np.diff(x, axis=3)).sum(1)[:, :, : -0 or None]
    edge = fg[:, :, 1:] ^ fg[:, :, :-1]
    assert grad[edge].mean() > 3 * grad[~edge].mean()


def test_procedural_dataset_batches_in_range_and_splits_disjoint():
    cfg = DataConfig(name="procedural", resolution=16, num_train=20, num_test=5)
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    b = train.__getitems__([0, 3, 5])
    assert b["image"].shape == (3, 3, 16, 16) and b["image"].min() >= -1 and b["image"].max() <= 1
    assert b["fg"].dtype == torch.bool and b["label"].dtype == torch.long
    assert not any(torch.equal(train.images[i], test.images[j]) for i in range(20) for j in range(5))
    assert train.digest() != test.digest()


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="Debian package dataset-fashion-mnist not installed")
@pytest.mark.parametrize("res", [32, 64])
def test_fashion_mnist_rgb_padded(res):
    ds = build_dataset(DataConfig(name="fashion-mnist", resolution=res), "test")
    assert len(ds) == 10000 and ds.num_classes == 10
    b = ds.__getitems__([0, 1])
    assert b["image"].shape == (2, 3, res, res)
    assert torch.equal(b["image"][:, 0], b["image"][:, 1])  # grey in RGB
    assert (b["image"][:, :, : res // 32 + 1] == -1).all()  # the 2-pixel padding (28 -> 32) is black
    assert b["fg"].any() and not b["fg"].all()
    assert len(build_dataset(DataConfig(name="fashion-mnist", resolution=res, limit_train=100), "train")) == 100


def test_missing_datasets_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="Fashion-MNIST not found"):
        build_dataset(DataConfig(name="fashion-mnist", resolution=32, root=str(tmp_path)), "train")
    with pytest.raises(UserError, match="does not exist"):
        build_dataset(DataConfig(name="folder", resolution=32, root=str(tmp_path / "nope")), "train")
    with pytest.raises(UserError, match="root is empty"):
        build_dataset(DataConfig(name="folder", resolution=32), "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        build_dataset(DataConfig(name="folder", resolution=32, root=str(tmp_path / "empty")), "train")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot read image"):
        build_dataset(DataConfig(name="folder", resolution=32, root=str(bad), test_fraction=0.0), "train")


def _save(path: Path, colour, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_folder_layouts(tmp_path):
    for i in range(10):
        _save(tmp_path / "plain" / f"{i:05d}.png", (i * 20, 0, 0))
    cfg = DataConfig(name="folder", layout="ffhq", resolution=16, root=str(tmp_path / "plain"), test_fraction=0.2)
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert (len(train), len(test)) == (8, 2) and train[0]["image"].shape == (3, 16, 16) and train[0]["label"] == -1

    for split in ("train", "val"):
        for c in ("cat", "dog"):
            for i in range(2):
                _save(tmp_path / "inet" / split / c / f"{i}.jpg", (0, 90, 0))
    cfg = DataConfig(name="folder", layout="imagenet", resolution=16, root=str(tmp_path / "inet"))
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert train.classes == ("cat", "dog") and sorted(int(train[i]["label"]) for i in range(4)) == [0, 0, 1, 1]
    assert len(test) == 4

    import json

    _save(tmp_path / "coco" / "train2017" / "1.jpg", (1, 2, 3))
    _save(tmp_path / "coco" / "train2017" / "2.jpg", (1, 2, 3))
    (tmp_path / "coco" / "annotations").mkdir()
    (tmp_path / "coco" / "annotations" / "captions_train2017.json").write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "1.jpg"}, {"id": 2, "file_name": "2.jpg"}],
                "annotations": [{"image_id": 1, "caption": "a red bus"}, {"image_id": 2, "caption": "two cats"}],
            }
        )
    )
    ds = build_dataset(DataConfig(name="folder", layout="coco", resolution=16, root=str(tmp_path / "coco")), "train")
    assert {ds[0]["caption"], ds[1]["caption"]} == {"a red bus", "two cats"}


def test_step_sampler_resumes_exactly_and_shards():
    full = StepSampler(40, 4, seed=3)
    it = iter(full)
    first = [next(it) for _ in range(25)]  # crosses two epoch boundaries
    resumed = iter(StepSampler(40, 4, seed=3, start_step=13))
    assert [next(resumed) for _ in range(12)] == first[13:]
    r0, r1 = iter(StepSampler(40, 4, 3, rank=0, world=2)), iter(StepSampler(40, 4, 3, rank=1, world=2))
    b0, b1 = next(r0), next(r1)
    assert not set(b0) & set(b1)
    with pytest.raises(UserError, match="fewer than one global batch"):
        StepSampler(3, 4, 0)


def test_eval_batches_cover_the_limit_once():
    ds = build_dataset(DataConfig(name="procedural", resolution=8, num_train=4, num_test=10), "test")
    sizes = [b["image"].shape[0] for b in eval_batches(ds, 4, limit=9)]
    assert sizes == [4, 4, 1]


def test_describe_and_preview_report_what_training_will_see(tmp_path):
    from mqvq.data.inspect import describe, preview
    from mqvq.data.procedural import KINDS

    cfg = DataConfig(name="procedural", resolution=16, num_train=40, num_test=12)
    info = describe(cfg)
    train, test = info["splits"]["train"], info["splits"]["test"]
    assert (train["images"], test["images"]) == (40, 12) and train["classes"] == list(KINDS)
    assert sum(train["per_class"]) == 40 and 0 < train["foreground_fraction"] < 0.5  # objects on larger backgrounds
    assert train["digest"] != test["digest"]
    pic = preview(cfg, n=5)  # images, then the foreground row
    assert (
        pic.shape[0] > 2 * 96 and pic.shape[1] > 5 * 96 and pic.dtype == np.uint8 and pic.std() > 0
    )  # two labelled rows of five, upscaled

    for split in ("train", "val"):
        for c, n in (("cat", 3), ("dog", 1)):
            for i in range(n):
                _save(tmp_path / "inet" / split / c / f"{i}.jpg", (0, 90, 0))
    cfg = DataConfig(name="folder", layout="imagenet", resolution=16, root=str(tmp_path / "inet"))
    info = describe(cfg)
    assert info["splits"]["train"]["per_class"] == [3, 1] and "foreground_fraction" not in info["splits"]["train"]
    one_row = preview(cfg, n=2).shape
    assert 96 < one_row[0] < 2 * 96 and one_row[1] > 2 * 96  # no foreground masks: one labelled row, upscaled


def test_data_show_cli(tmp_path):
    import json

    from typer.testing import CliRunner

    from mqvq.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["data", "show", "vqgan-f16", "--json", "--preview", str(tmp_path / "p.png"), "--num", "4"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["name"] == "procedural" and info["splits"]["test"]["images"] > 0
    w, h = Image.open(tmp_path / "p.png").size
    assert w > 4 * 96 and 2 * 96 < h < 3 * 96  # four images in two labelled rows, upscaled
    for args, msg in [
        (["--set", "stage1.data.name=folder", "--set", f"stage1.data.root={tmp_path / 'none'}"], "does not exist"),
        (["--preview", str(tmp_path / "p.jpg")], "ending in .png"),
    ]:
        r = runner.invoke(app, ["data", "show", "vqgan-f16", *args])
        assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output, r.output
