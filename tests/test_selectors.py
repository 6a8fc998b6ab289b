"""Token selectors beyond the paper's (issue 25): each keeps exactly N positions in raster order;
damage ranks by measured damage; straight-through's gradient reaches the scorer with no gain on
the kept features; the bounds (entropy, oracle) follow their rule; the AUROC diagnostic; refusals."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from mqvq.config import DataConfig, num_kept
from mqvq.config.schema import SELECTORS
from mqvq.errors import UserError
from mqvq.experiments import load_experiment
from mqvq.metrics.mask import MaskTally, per_image_auroc
from mqvq.models.masking import keep_from_positions
from mqvq.models.mqvae import MQVAE
from mqvq.models.selectors import (
    EntropyMask,
    OracleForegroundMask,
    StraightThroughMask,
    anneal_tau,
    damage_targets,
    foreground_share,
    patch_entropy,
    pooled_error,
    ranking_loss,
)


def smoke_model(selector: str, ratio: float = 0.5) -> MQVAE:
    cfg = load_experiment(
        "mqvae-f16-adaptive-50", "smoke", [f"stage1.model.mask.selector={selector}", f"stage1.model.mask.ratio={ratio}"]
    )
    torch.manual_seed(0)
    return MQVAE(cfg.stage1.model)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.75])
@pytest.mark.parametrize("selector", SELECTORS)
def test_every_selector_keeps_exactly_n_positions_in_raster_order(selector, ratio, train):
    model = smoke_model(selector, ratio).train(train)
    torch.manual_seed(1)
    x, fg = torch.rand(5, 3, 32, 32) * 2 - 1, torch.rand(5, 32, 32) > 0.5
    enc = model(x, fg).encoded
    h, w = enc.grid
    n = num_kept(h * w, ratio)
    assert enc.positions.shape == (5, n) and enc.codes.shape == (5, n)
    assert (enc.positions[:, 1:] > enc.positions[:, :-1]).all()  # unique, raster order
    assert torch.equal(enc.keep, keep_from_positions(enc.positions, h * w))
    assert enc.scores is not None and enc.scores.shape == (5, h * w)


@pytest.mark.parametrize("selector", ["damage", "entropy", "oracle-foreground"])
def test_batched_selection_equals_per_image(selector):
    model = smoke_model(selector).eval()
    x, fg = torch.rand(4, 3, 32, 32) * 2 - 1, torch.rand(4, 32, 32) > 0.5
    torch.manual_seed(3)
    batched = model.encode(x, fg)
    if selector == "oracle-foreground":  # random tie-breaking: compare on a mask without ties
        fg = torch.zeros(4, 32, 32, dtype=torch.bool)
        for i in range(4):
            fg[i, : 4 * (i + 1)] = True  # whole token rows, then nothing: ties only among full and empty tokens
    for i in range(4):
        one = model.encode(x[i : i + 1], fg[i : i + 1])
        if selector != "oracle-foreground":
            assert torch.equal(one.positions[0], batched.positions[i])
            assert torch.equal(one.codes[0], batched.codes[i])
        else:
            share = foreground_share(fg[i : i + 1], one.grid)[0]
            assert (share[one.positions[0]] >= share.max() - 1e-6).sum() == min(
                int((share == 1).sum()), one.positions.shape[1]
            )


# --------------------------------------------------------------------------- damage
def test_damage_target_ranks_the_costlier_token_higher():
    """A hand-made decoder on a 4x4 grid: dropping token 5 ruins its patch, dropping token 9 dims it,
    token 2 is wrong whether kept or not (no damage from dropping it), every other token is restored."""
    grid = (4, 4)
    images = torch.zeros(1, 3, 16, 16)

    def decode(keep):
        recon = images.clone()
        recon[:, :, 0:4, 8:12] = 0.8  # token 2: always wrong
        if not keep[0, 5]:
            recon[:, :, 4:8, 4:8] = 1.0
        if not keep[0, 9]:
            recon[:, :, 8:12, 4:8] = 0.25
        return recon

    keep = torch.zeros(1, 16, dtype=torch.bool)
    keep[0, ::2] = True  # either half: the target does not depend on which
    for k in (keep, ~keep):
        damage, valid = damage_targets(decode, images, k, ~k, grid)
        assert valid.all()  # a mask and its complement: every token is dropped once and kept once
        assert damage[0, 5] > damage[0, 9] > 0
        assert damage[0, 2] == 0 and damage[0, 0] == 0
    assert pooled_error(images, decode(keep), grid)[0, 2] > 0.5  # the plain error would have ranked it high
    # trained on it with the ranking loss, a predictor puts token 5 first, then 9
    pred = torch.zeros(1, 16, requires_grad=True)
    opt = torch.optim.SGD([pred], lr=1.0)
    valid = torch.ones(1, 16, dtype=torch.bool)
    for _ in range(50):
        opt.zero_grad()
        ranking_loss(pred, damage, valid).backward()
        opt.step()
    order = pred[0].argsort(descending=True).tolist()
    assert order[:2] == [5, 9]


def test_ranking_loss_ignores_pairs_outside_the_valid_tokens():
    pred = torch.zeros(1, 4, requires_grad=True)
    target = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    ranking_loss(pred, target, torch.tensor([[True, True, False, False]])).backward()
    assert pred.grad[0, 0] < 0 < pred.grad[0, 1] and pred.grad[0, 2] == pred.grad[0, 3] == 0


def test_damage_scorer_learns_only_from_its_loss_and_its_features_have_no_gain():
    model = smoke_model("damage").train()
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    out = model(x)
    assert out.selector_loss is not None and out.selector_loss.requires_grad
    # the reconstruction gives the scorer no gradient: no gain on the kept features, selection detached
    out.recon.abs().mean().backward(retain_graph=True)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.mask.scorer.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    enc_grads = [p.grad.clone() for p in model.encoder.parameters()]
    out.selector_loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.mask.scorer.parameters())
    # ... and the damage loss does not reach the encoder (the scorer reads detached features)
    assert all(torch.equal(a, p.grad) for a, p in zip(enc_grads, model.encoder.parameters()))
    assert model.eval()(x).selector_loss is None  # only training measures damage


def test_the_damage_pass_leaves_the_codebook_alone():
    model = smoke_model("damage").train()
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    torch.manual_seed(0)
    model(x)
    after_damage = model.quantizer.embed.clone()
    reference = smoke_model("damage").train()
    torch.manual_seed(0)
    reference._quantize(x)  # the main pass alone: its one EMA update
    assert torch.equal(after_damage, reference.quantizer.embed)


# --------------------------------------------------------------------------- straight-through
def test_straight_through_gradient_reaches_the_scorer_and_kept_features_have_no_gain():
    torch.manual_seed(0)
    mod = StraightThroughMask(8, 0.5, "mlp", 16).train()
    z = torch.randn(3, 8, 4, 4)
    out = mod(z)
    ln = F.layer_norm(z.flatten(2).transpose(1, 2), (8,))
    torch.testing.assert_close(out.features, ln.gather(1, out.positions[..., None].expand(-1, -1, 8)))
    assert out.relaxed is not None and out.relaxed.requires_grad

    model = smoke_model("straight-through").train()
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    torch.manual_seed(5)
    out = model(x)
    out.recon.abs().mean().backward()
    grads = [p.grad for p in model.mask.scorer.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_straight_through_gradient_has_the_sign_and_size_of_the_value_of_keeping_each_token(monkeypatch):
    """A hand-made case: scores (3, 1, 0, -2), no Gumbel noise, keep 2, tau 1, and a loss to which keeping
    tokens 0 and 1 is worth 1 each and keeping tokens 2 and 3 costs 1 each. The surrogate is centred on
    the threshold (0.5, midway between the 2nd and 3rd score), so each score's gradient is
    w_i * sigmoid'(s_i - 0.5): descent raises the two worth keeping and lowers the other two, most
    strongly for the two nearest the boundary (0.235 = sigmoid'(0.5) against 0.070 = sigmoid'(2.5))."""
    mod = StraightThroughMask(1, 0.5, "mlp", 4).train()
    s = torch.tensor([[3.0, 1.0, 0.0, -2.0]], requires_grad=True)
    monkeypatch.setattr(mod.scorer, "logits", lambda z: s)
    monkeypatch.setattr(
        torch, "rand_like", lambda t: torch.full_like(t, math.exp(-1.0))
    )  # Gumbel noise -log(-log u) = 0
    out = mod(torch.zeros(1, 1, 2, 2))
    assert out.positions.tolist() == [[0, 1]]
    worth = torch.tensor([[-1.0, -1.0, 1.0, 1.0]])  # loss per unit of "kept"
    (worth * out.relaxed).sum().backward()
    d = lambda x: torch.sigmoid(torch.tensor(x)) * (1 - torch.sigmoid(torch.tensor(x)))  # noqa: E731
    expected = torch.stack([-d(2.5), -d(0.5), d(-0.5), d(-2.5)])[None]
    torch.testing.assert_close(s.grad, expected)
    assert (s.grad[0, :2] < 0).all() and (s.grad[0, 2:] > 0).all()
    assert s.grad[0, 1].abs() > 3 * s.grad[0, 0].abs() and s.grad[0, 2].abs() > 3 * s.grad[0, 3].abs()


def test_straight_through_surrogate_is_zero_forward():
    """The relaxed term changes gradients, never values: same reconstruction with and without it."""
    model = smoke_model("straight-through").train()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.manual_seed(7)
    q = model._quantize(x)
    enc = q.encoded
    assert q.relax is not None
    with_term = model._decode_vectors(q.zq, enc.positions, enc.keep, enc.grid, q.relax)
    without = model._decode_vectors(q.zq, enc.positions, enc.keep, enc.grid, None)
    torch.testing.assert_close(with_term, without)


def test_straight_through_is_deterministic_in_eval_and_anneals_tau():
    model = smoke_model("straight-through").eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(model.encode(x).positions, model.encode(x).positions)
    assert anneal_tau(1.0, 0.1, 0, 100) == pytest.approx(1.0)
    assert anneal_tau(1.0, 0.1, 99, 100) == pytest.approx(0.1)
    assert anneal_tau(1.0, 0.1, 50, 101) == pytest.approx(math.sqrt(0.1))


# --------------------------------------------------------------------------- bounds
def test_entropy_scores_flat_patches_zero_and_keeps_the_textured_ones():
    x = -torch.ones(1, 3, 8, 8)  # 2x2 grid of 4x4 patches, all flat black
    x[:, :, 0:4, 4:8] = torch.tensor([-1.0, 1.0]).repeat(8)[:16].reshape(4, 4)  # token 1: half black, half white
    e = patch_entropy(x, (2, 2))
    assert e[0, 0] == 0 and e[0, 1] == pytest.approx(math.log(2), abs=1e-5)
    out = EntropyMask(0.75)(torch.randn(1, 4, 2, 2), images=x)
    assert out.positions.tolist() == [[1]]


def test_oracle_keeps_the_foreground_on_a_fixture():
    fg = torch.zeros(2, 16, 16, dtype=torch.bool)
    fg[0, 4:12, 4:12] = True  # image 0: the 4 centre tokens of a 4x4 grid
    fg[1, 0:4, :] = True  # image 1: the top row of tokens
    out = OracleForegroundMask(0.5)(torch.randn(2, 4, 4, 4), fg=fg)
    kept = [set(p) for p in out.positions.tolist()]
    assert {5, 6, 9, 10} <= kept[0] and {0, 1, 2, 3} <= kept[1]
    with pytest.raises(UserError, match="needs foreground masks"):
        OracleForegroundMask(0.5)(torch.randn(2, 4, 4, 4))


def test_bounds_have_nothing_to_learn_and_tokenize_for_stage_2():
    from mqvq.data import build_dataset
    from mqvq.stages.tokenize import tokenize

    ds = build_dataset(DataConfig(name="procedural", resolution=32, num_train=8, num_test=8), "test")
    for selector in ("entropy", "oracle-foreground"):
        model = smoke_model(selector)
        assert not list(model.mask.parameters())
        ts = tokenize(model, ds, 4, torch.device("cpu"), flip=True)
        n = num_kept(64, 0.5)
        assert ts.codes.shape == (16, n) and (ts.positions[:, 1:] > ts.positions[:, :-1]).all()
    # the oracle keeps the mirrored foreground for the mirrored copy
    ts = tokenize(smoke_model("oracle-foreground"), ds, 8, torch.device("cpu"), flip=True)
    share = foreground_share(torch.stack([ds[i]["fg"] for i in range(8)]), (8, 8))
    kept_share = share.gather(1, ts.positions[:8]).mean()
    assert kept_share >= share.topk(n, dim=1).values.mean() - 1e-6


# --------------------------------------------------------------------------- AUROC
def test_auroc_on_hand_made_score_maps():
    fg = torch.tensor([[True, True, False, False]] * 3)
    scores = torch.tensor(
        [
            [0.9, 0.8, 0.1, 0.2],  # every foreground token above every background one
            [0.5, 0.5, 0.5, 0.5],  # blind: all ties
            [0.1, 0.2, 0.9, 0.8],
        ]
    )  # the reverse
    auc, defined = per_image_auroc(scores, fg)
    assert defined.all()
    torch.testing.assert_close(auc, torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64))
    _, defined = per_image_auroc(torch.rand(2, 4), torch.tensor([[True] * 4, [False] * 4]))
    assert not defined.any()  # one class only: undefined, left out of the mean


def test_mask_tally_reports_the_mean_auroc_over_images():
    fg = torch.zeros(2, 8, 8, dtype=torch.bool)
    fg[:, :4] = True  # top half foreground: tokens 0, 1 of a 2x2 grid
    tally = MaskTally((2, 2))
    keep = torch.tensor([[True, True, False, False]] * 2)
    tally.add(keep, fg, torch.tensor([[1.0, 0.9, 0.0, 0.1], [0.0, 0.1, 1.0, 0.9]]))
    assert tally.result()["mask_auroc"] == pytest.approx(0.5)  # 1.0 and 0.0


# --------------------------------------------------------------------------- config and data
@pytest.mark.parametrize(
    "override, message",
    [
        (
            ["stage1.model.mask.selector=magic"],
            "expected one of 'gain', 'damage', 'straight-through', 'entropy', 'oracle-foreground', 'centre'",
        ),
        (
            ["stage1.model.mask.selector=oracle-foreground", "stage1.data.name=folder", "stage1.data.root=/tmp"],
            "needs foreground masks, which folder data does not have: allowed with procedural or fashion-mnist",
        ),
        (["stage1.model.mask.type=random", "stage1.model.mask.selector=entropy"], "needs model.mask.type = 'adaptive'"),
        (["stage1.model.mask.selector=straight-through", "stage1.model.mask.tau_end=2.0"], "0 < tau_end <= tau_start"),
        (["stage1.data.style=textured", "stage1.data.name=fashion-mnist"], "applies to procedural data only"),
    ],
)
def test_bad_selector_settings_are_refused_in_one_sentence(override, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_experiment("mqvae-f16-adaptive-50", "smoke", override)


def test_default_selector_keeps_existing_config_hashes():
    from mqvq.config import config_hash, identity

    cfg = load_experiment("mqvae-f16-adaptive-50", "smoke")
    ident = identity(cfg.stage1)
    assert "selector" not in ident["model"]["mask"] and "style" not in ident["data"]
    other = load_experiment("mqvae-f16-adaptive-50", "smoke", ["stage1.model.mask.selector=damage"])
    assert config_hash(identity(other.stage1)) != config_hash(ident)


def test_textured_test_bed_separates_importance_from_brightness():
    from mqvq.data import build_dataset, eval_batches
    from mqvq.metrics.mask import foreground_contrast

    cfg = DataConfig(name="procedural", style="textured", resolution=32, num_train=8, num_test=300)
    ds = build_dataset(cfg, "test")
    mixed = build_dataset(DataConfig(name="procedural", resolution=32, num_train=8, num_test=300), "test")
    assert ds.digest() != mixed.digest()
    info = foreground_contrast(eval_batches(ds, 100), 4)
    assert abs(info["brightness_foreground"] - info["brightness_background"]) < 0.1
    assert 0.2 < info["foreground_token_fraction"] < 0.5
    # every background is a pattern: no plain ones, and background patches carry as much detail as object ones
    assert not (ds.attributes["background"] == 0).any()
    x, fg = torch.stack([ds[i]["image"] for i in range(300)]), torch.stack([ds[i]["fg"] for i in range(300)])
    from mqvq.metrics.mask import token_detail, token_foreground

    detail, tok = token_detail(x, (8, 8)), token_foreground(fg, (8, 8))
    assert detail[~tok].mean() > 0.5 * detail[tok].mean()


def test_data_show_reports_foreground_tokens_and_brightness():
    from typer.testing import CliRunner

    from mqvq.cli import app

    res = CliRunner().invoke(
        app,
        [
            "data",
            "show",
            "mqvae-f16-adaptive-50",
            "--profile",
            "smoke",
            "--set",
            "stage1.data.style=textured",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    test = info["splits"]["test"]
    assert info["style"] == "textured" and test["downsample"] == 4
    assert {"foreground_token_fraction", "brightness_foreground", "brightness_background"} <= set(test)


def test_damage_random_share_draws_blind_masks_while_training_only():
    cfg = load_experiment(
        "mqvae-f16-adaptive-50",
        "smoke",
        ["stage1.model.mask.selector=damage", "stage1.model.mask.damage_random_share=1.0"],
    )
    torch.manual_seed(0)
    model = MQVAE(cfg.stage1.model)
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    n = num_kept(64, 0.5)
    top = lambda enc: enc.scores.detach().topk(n, dim=1).indices.sort(dim=1).values  # noqa: E731
    trained = model.train()(x).encoded
    assert not torch.equal(trained.positions, top(trained))  # every image's mask drawn at random
    evaluated = model.eval()(x).encoded
    assert torch.equal(evaluated.positions, top(evaluated))  # in eval, the predicted damage decides
    with pytest.raises(UserError, match="needs model.mask.selector = 'damage'"):
        load_experiment("mqvae-f16-adaptive-50", "smoke", ["stage1.model.mask.damage_random_share=0.5"])


def test_every_selector_has_a_report_name_and_builds():
    from mqvq.config.schema import SELECTOR_NAMES

    assert list(SELECTOR_NAMES) == list(SELECTORS)
    for selector in SELECTORS:  # MQVAE's dispatch covers the list
        assert smoke_model(selector).mask is not None
