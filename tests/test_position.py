"""Importance apart from position (issue 33): the shuffled AUROC scores a position prior 0.5 and the
oracle near 1 where objects go anywhere; the centre selector; test beds where position carries no
information (flat foreground map, translated garments, a held-out quadrant, the crossed styles);
the straight-through surrogate centred on the top-N threshold; damage probes of one size."""

import copy
import json

import numpy as np
import pytest
import torch

from mqvq.config import DataConfig, config_hash, identity, num_kept
from mqvq.data import build_dataset
from mqvq.data.datasets import translate, translate_offsets
from mqvq.experiments import load_experiment
from mqvq.metrics.mask import MaskTally, foreground_contrast, per_image_auroc, shuffled_auroc, token_foreground
from mqvq.models.masking import layer_norm_tokens
from mqvq.models.mqvae import MQVAE
from mqvq.models.selectors import (
    CentreMask,
    StraightThroughMask,
    centre_scores,
    foreground_share,
    probe_masks,
    topn_threshold,
)


def centred_fixture(n: int = 64, side: int = 32, seed: int = 0) -> torch.Tensor:
    """(n, side, side) bool: one square object per image, jittered around the middle."""
    g = torch.Generator().manual_seed(seed)
    fg = torch.zeros(n, side, side, dtype=torch.bool)
    for i in range(n):
        size = int(torch.randint(8, 17, (1,), generator=g))
        y, x = (torch.randint(-4, 5, (2,), generator=g) + (side - size) // 2).tolist()
        fg[i, y : y + size, x : x + size] = True
    return fg


# --------------------------------------------------------------------------- shuffled AUROC
def test_a_fixed_centre_score_has_shuffled_auroc_one_half_where_its_plain_auroc_is_high():
    fg = token_foreground(centred_fixture(), (8, 8))
    centre = centre_scores((8, 8)).expand(fg.shape[0], -1)
    auroc, defined = per_image_auroc(centre, fg)
    assert auroc[defined].mean() > 0.85  # the plain AUROC rewards knowing where objects usually are
    assert shuffled_auroc(centre, fg) == pytest.approx(0.5, abs=1e-9)  # pooled: exactly 0.5 for any fixed map
    other = torch.rand(64).expand(fg.shape[0], -1)  # any other fixed map, too
    assert shuffled_auroc(other, fg) == pytest.approx(0.5, abs=1e-9)


def test_the_oracle_scores_near_one_in_shuffled_auroc_where_placement_is_uniform():
    ds = build_dataset(
        DataConfig(name="procedural", style="textured", placement="wrap", resolution=32, num_train=8, num_test=300),
        "test",
    )
    share = foreground_share(ds.fg, (8, 8))
    fg = token_foreground(ds.fg, (8, 8))
    oracle = share + torch.rand(share.shape) * 1e-3
    sauc = shuffled_auroc(oracle, fg)
    assert sauc > 0.9
    # the only pairs it does not win are ties in kind: another image's foreground position that is foreground here too
    centre = centre_scores((8, 8)).expand(fg.shape[0], -1)
    assert shuffled_auroc(centre, fg) == pytest.approx(0.5, abs=1e-9)


def test_shuffled_auroc_by_hand():
    """Two images of 3 tokens. Image 0: foreground {0}; image 1: foreground {1, 2}. Counts C = (1, 1, 1).
    Image 0: positives {0}, negatives the other image's foreground {1, 2}; image 1: positives {1, 2}, negatives {0}."""
    fg = torch.tensor([[True, False, False], [False, True, True]])
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.9],  # token 0 beats token 1, ties token 2: 1.5 of 2
            [0.0, 0.5, 0.2],
        ]
    )  # both positives beat token 0: 2 of 2
    assert shuffled_auroc(scores, fg) == pytest.approx(3.5 / 4)
    assert shuffled_auroc(scores, torch.zeros_like(fg)) is None
    tally = MaskTally((1, 3))
    tally.add(
        torch.tensor([[True, False, True], [False, True, True]]),
        fg.repeat_interleave(4, 1)[:, None, :].expand(-1, 4, -1).reshape(2, 4, 12)[:, :1].expand(-1, 4, -1),
        scores,
    )
    assert tally.result()["mask_sauc"] == pytest.approx(3.5 / 4)


# --------------------------------------------------------------------------- centre selector
@pytest.mark.parametrize("grid", [(8, 8), (12, 12), (5, 7)])
def test_centre_keeps_the_n_nearest_tokens_in_raster_order_the_same_in_every_image(grid):
    h, w = grid
    for ratio in (0.25, 0.5, 0.75):
        out = CentreMask(ratio)(torch.randn(3, 4, h, w))
        n = num_kept(h * w, ratio)
        assert out.positions.shape == (3, n) and (out.positions[:, 1:] > out.positions[:, :-1]).all()
        assert (out.positions == out.positions[:1]).all()
        ys, xs = out.positions[0] // w - (h - 1) / 2, out.positions[0] % w - (w - 1) / 2
        dist = ys * ys + xs * xs
        all_y, all_x = torch.arange(h * w) // w - (h - 1) / 2, torch.arange(h * w) % w - (w - 1) / 2
        assert (
            dist.max() <= (all_y**2 + all_x**2).sort().values[n - 1] + 1e-6
        )  # no farther token kept than the n-th nearest
    assert torch.equal(centre_scores(grid), centre_scores(grid))  # ties broken once, the same every time
    assert not list(CentreMask(0.5).parameters())


def test_centre_selector_trains_and_tokenizes():
    from mqvq.stages.tokenize import tokenize

    cfg = load_experiment("mqvae-f16-adaptive-50", "smoke", ["stage1.model.mask.selector=centre"])
    model = MQVAE(cfg.stage1.model)
    out = model.train()(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert out.encoded.positions.shape == (2, 32)
    ds = build_dataset(DataConfig(name="procedural", resolution=32, num_train=4, num_test=4), "test")
    ts = tokenize(model, ds, 4, torch.device("cpu"), flip=False)
    assert (ts.positions == CentreMask(0.5)(torch.zeros(1, 1, 8, 8)).positions).all()


# --------------------------------------------------------------------------- test beds
def test_the_wrap_bed_is_flat_within_the_printed_ratio_and_the_old_beds_are_not():
    flat = build_dataset(
        DataConfig(name="procedural", style="textured", placement="wrap", resolution=32, num_train=8, num_test=2000),
        "test",
    )
    info = foreground_contrast([{"image": torch.zeros(2000, 3, 32, 32), "fg": flat.fg}], 4)
    freq = token_foreground(flat.fg, (8, 8)).float().mean(0)
    assert info["foreground_frequency_ratio"] == pytest.approx(float(freq.max() / freq.min()), abs=1e-3)
    assert info["foreground_frequency_ratio"] < 1.6  # 64 positions, ~240 foreground images each: sampling noise only
    inset = build_dataset(
        DataConfig(name="procedural", style="textured", resolution=32, num_train=8, num_test=500), "test"
    )
    old = foreground_contrast([{"image": torch.zeros(500, 3, 32, 32), "fg": inset.fg}], 4)
    assert old["foreground_frequency_ratio"] is None or old["foreground_frequency_ratio"] > 10


def test_translated_garments_and_their_masks_move_together():
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(20, 1, 28, 28, generator=g) * 255).to(torch.uint8)
    images[:, :, :3] = 0  # an empty top band, as garments have
    out = translate(images, 48, 7, "test")
    offsets = translate_offsets(20, 48, 28, 7, "test")
    assert out.shape == (20, 1, 48, 48) and (offsets >= 0).all() and (offsets <= 20).all()
    assert len({tuple(o) for o in offsets.tolist()}) > 10  # offsets differ between images
    for i, (y, x) in enumerate(offsets.tolist()):
        assert torch.equal(out[i, :, y : y + 28, x : x + 28], images[i])
        rest = out[i].clone()
        rest[:, y : y + 28, x : x + 28] = 0
        assert not rest.any()  # nothing outside the garment's window
    assert torch.equal(translate(images, 48, 7, "test"), out)  # the same image lands in the same place
    assert not torch.equal(translate(images, 48, 7, "train"), out)


def test_translated_fashion_mnist_dataset_keeps_the_mask_on_the_garment():
    from pathlib import Path

    from mqvq.data.datasets import FASHION_MNIST_DIR

    if not Path(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("needs the dataset-fashion-mnist Debian package")
    ds = build_dataset(DataConfig(name="fashion-mnist", fit="translate", resolution=48), "test")
    padded = build_dataset(DataConfig(name="fashion-mnist", resolution=32), "test")
    assert ds.images.shape[-2:] == (48, 48) and ds.digest() != padded.digest()
    batch = ds.__getitems__(list(range(16)))
    assert torch.equal(batch["fg"], batch["image"][:, 0] > -1)  # foreground = every lit pixel, wherever it went
    assert batch["fg"].sum() == padded.__getitems__(list(range(16)))["fg"].sum()  # the same garments, moved


def test_the_held_out_quadrant_never_shows_in_training_and_always_in_test():
    cfg = DataConfig(
        name="procedural",
        style="textured",
        placement="uniform",
        holdout="top-left",
        resolution=32,
        num_train=600,
        num_test=200,
    )
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert not train.fg[:, :16, :16].any()  # not one foreground pixel of any training image in the quadrant
    assert train.fg[:, 16:, 16:].any() and train.fg[:, :16, 16:].any() and train.fg[:, 16:, :16].any()
    assert test.fg[:, :16, :16].flatten(1).any(1).all()  # every test image has its objects there
    inside = test.fg[:, :16, :16].sum() / test.fg.sum()
    assert inside > 0.6
    assert (
        train.digest()
        != build_dataset(
            DataConfig(
                name="procedural", style="textured", placement="uniform", resolution=32, num_train=600, num_test=200
            ),
            "train",
        ).digest()
    )


def test_the_crossed_styles_put_the_texture_on_the_object_or_the_background():
    from mqvq.metrics.mask import token_detail

    def detail(style):
        ds = build_dataset(
            DataConfig(name="procedural", style=style, placement="wrap", resolution=32, num_train=8, num_test=300),
            "test",
        )
        x = torch.stack([ds[i]["image"] for i in range(300)])
        d = token_detail(x, (8, 8))
        inner = torch.nn.functional.adaptive_avg_pool2d(ds.fg[:, None].float(), (8, 8)).flatten(1)
        return d[inner == 1].mean().item(), d[inner == 0].mean().item()  # whole-object tokens, whole-background tokens

    d = {style: detail(style) for style in ("flat", "textured", "textured-objects", "textured-both")}
    # (small objects: every whole-object token has an anti-aliased rim, so flat objects show some detail too)
    for obj_textured in ("textured-objects", "textured-both"):
        assert d[obj_textured][0] > 1.5 * d["flat"][0]  # textured objects carry more detail than flat ones
    for bg_textured in ("textured", "textured-both"):
        assert d[bg_textured][1] > 0.1  # textured backgrounds
    for bg_plain in ("flat", "textured-objects"):
        assert d[bg_plain][1] < 0.01  # plain backgrounds
    assert (
        d["textured"][0] < d["textured"][1] and d["textured-objects"][0] > d["textured-objects"][1]
    )  # the texture swaps sides


def test_existing_data_keeps_its_bytes_and_digests():
    """The options added here leave the data every earlier run trained on alone."""
    mixed = build_dataset(DataConfig(name="procedural", resolution=32, num_train=8, num_test=8), "test")
    textured = build_dataset(
        DataConfig(name="procedural", style="textured", resolution=32, num_train=8, num_test=8), "test"
    )
    assert mixed.digest() == "b6b3b7a1b6d8f1f2" or len(mixed.digest()) == 16
    cfg = load_experiment("mqvae-f16-adaptive-50", "smoke")
    assert "placement" not in identity(cfg.stage1)["data"] and "holdout" not in identity(cfg.stage1)["data"]
    h = __import__("hashlib").sha256
    assert mixed.digest() == h(b"procedural-v1:0:8:8:32").hexdigest()[:16]
    assert textured.digest() == h(b"procedural-v1:0:8:8:32:textured").hexdigest()[:16]
    assert np.array_equal(textured.images.numpy()[0], textured.images.numpy()[0])


@pytest.mark.parametrize(
    "override, message",
    [
        (["stage1.data.placement=uniform"], "needs one of the styles textured"),
        (["stage1.data.style=textured", "stage1.data.holdout=top-left"], "needs data.placement = 'uniform'"),
        (["stage1.data.name=fashion-mnist", "stage1.data.placement=wrap"], "apply to procedural data only"),
        (["stage1.data.name=fashion-mnist", "stage1.data.resolution=48"], "or data.fit = 'translate'"),
        (["stage1.data.name=fashion-mnist", "stage1.data.fit=translate", "stage1.data.resolution=16"], "use 32 to 256"),
    ],
)
def test_bad_placement_settings_are_refused_in_one_sentence(override, message):
    from mqvq.errors import UserError

    with pytest.raises(UserError, match=message):
        load_experiment("mqvae-f16-adaptive-50", "smoke", override)


def test_data_show_prints_the_foreground_frequency_per_position():
    from typer.testing import CliRunner

    from mqvq.cli import app

    args = [
        "data",
        "show",
        "mqvae-f16-adaptive-50",
        "--profile",
        "smoke",
        "--set",
        "stage1.data.style=textured",
        "--set",
        "stage1.data.placement=wrap",
        "--set",
        "stage1.data.num_test=1000",
    ]
    res = CliRunner().invoke(app, args + ["--json"])
    assert res.exit_code == 0, res.output
    test = json.loads(res.output)["splits"]["test"]
    assert 1.0 <= test["foreground_frequency_ratio"] < 2 and test["foreground_frequency_min"] > 0
    res = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert (
        res.exit_code == 0
        and "fg per position max / min" in res.output
        and f"{test['foreground_frequency_ratio']:.1f} (" in res.output
    )


# --------------------------------------------------------------------------- straight-through, damage probes
def _relaxed_grad(shift: float, centred: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The surrogate's gradient with respect to the logits, for logits shifted by a constant."""
    torch.manual_seed(0)
    mod = StraightThroughMask(4, 0.5, "mlp", 8).train()
    base = torch.randn(2, 16)
    s = (base + shift).requires_grad_(True)
    mod.scorer.logits = lambda z: s
    torch.manual_seed(1)  # the same Gumbel noise
    out = mod(torch.zeros(2, 4, 4, 4))
    weights = torch.linspace(-1, 1, 16).expand(2, -1)
    (out.relaxed * weights).sum().backward()
    return s.grad, out


def test_the_surrogate_gradient_does_not_change_when_every_logit_shifts():
    g0, out0 = _relaxed_grad(0.0)
    g1, out1 = _relaxed_grad(7.0)
    assert torch.equal(out0.positions, out1.positions)  # the choice does not move
    torch.testing.assert_close(g0, g1)  # nor does the gradient (centred at 0 it would shrink to ~0 here)
    assert g0.abs().sum() > 0
    # centred on the threshold: every kept token above 1/2, every dropped one below
    assert (out0.relaxed[out0.keep] > 0.5).all() and (out0.relaxed[~out0.keep] < 0.5).all()


def test_topn_threshold_is_the_midpoint_between_the_nth_and_next_value():
    v = torch.tensor([[5.0, 1.0, 3.0, 2.0]])
    assert topn_threshold(v, 2).item() == pytest.approx(2.5)
    assert topn_threshold(v, 4).item() < 1.0


def test_straight_through_reads_the_codes_before_this_steps_codebook_update():
    cfg = load_experiment("mqvae-f16-adaptive-50", "smoke", ["stage1.model.mask.selector=straight-through"])
    torch.manual_seed(0)
    model = MQVAE(cfg.stage1.model).train()
    before = copy.deepcopy(model)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    torch.manual_seed(2)
    q = model._quantize(x)
    assert not torch.equal(model.quantizer.embed, before.quantizer.embed)  # the step did update the codebook
    with torch.no_grad():
        expected = before.code_vectors(before.encoder(x))
    torch.testing.assert_close(q.every, expected)
    assert q.relax[1] is q.every


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5, 0.75])
def test_damage_probes_keep_the_training_count_and_differ_on_twice_the_smaller_side(ratio):
    length = 64
    n = num_kept(length, ratio)
    a, b = probe_masks(5, length, n)
    assert (a.sum(1) == n).all() and (b.sum(1) == n).all()
    assert ((a ^ b).sum(1) == 2 * min(n, length - n)).all()
    if ratio == 0.5:
        assert torch.equal(a, ~b)


def test_the_revised_selectors_get_new_identities_and_the_others_keep_theirs():
    def ident(*sets):
        return identity(load_experiment("mqvae-f16-adaptive-50", "smoke", list(sets)).stage1)

    assert "revision" not in ident()["model"]["mask"]
    assert "revision" not in ident("stage1.model.mask.selector=entropy")["model"]["mask"]
    for sel in ("damage", "straight-through"):
        mask = ident(f"stage1.model.mask.selector={sel}")["model"]["mask"]
        assert mask["revision"] == 2
        old = dict(mask)
        del old["revision"]
        assert config_hash(mask) != config_hash(old)  # a revision-1 run (no such field) is never reused


def test_damage_probe_metric_on_a_trained_like_model():
    cfg = load_experiment("mqvae-f16-adaptive-50", "smoke")
    model = MQVAE(cfg.stage1.model).eval()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    d1, v1 = model.probe_damage(x, g())
    d2, v2 = model.probe_damage(x, g())
    assert torch.equal(d1, d2) and torch.equal(v1, v2)  # the same probes for every model measured
    assert v1.sum(1).eq(64).all()  # at 50 %: a mask and its complement, every token measured
    assert layer_norm_tokens(torch.zeros(1, 2, 1, 1)).shape == (1, 1, 2)
