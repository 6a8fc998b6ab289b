"""Defaults aligned with the released code (../shared/reference/official-implementation.md), and the
documented switches that keep the other choice."""

import pytest
import torch

from mqvq.config import MaskConfig, MQVAEConfig, QuantizerConfig
from mqvq.models.masking import AdaptiveMask
from mqvq.models.mqvae import MQVAE
from mqvq.models.quantizer import VectorQuantizer
from mqvq.stages.schedule import lr_at


def _model(**kw) -> MQVAE:
    cfg = MQVAEConfig(
        downsample=4,
        channels=8,
        channel_mult=(1, 2, 4),
        num_res_blocks=1,
        z_channels=6,
        mask=MaskConfig("adaptive", 0.5, "conv", 8),
        quantizer=QuantizerConfig(32, 5),
        **kw,
    )
    return MQVAE(cfg)


def test_released_projections_bias_free_in_and_straight_to_the_decoder_width():
    m = _model()
    width = 8 * 4
    assert m.quant_proj.bias is None  # masker.pre_projection: Linear(bias=False)
    assert m.post_quant.in_channels == 5 and m.post_quant.out_channels == width  # demasker.post_projection
    assert m.decoder.conv_in.in_channels == width == m.decoder.conv_in.out_channels  # conv_in at the width
    t = _model(projection="taming")
    assert t.quant_proj.bias is not None and t.post_quant.out_channels == 6 and t.decoder.conv_in.in_channels == 6
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert m(x).recon.shape == t(x).recon.shape == x.shape


def test_checkpoints_without_the_projection_field_load_with_the_old_layout(tmp_path):
    from mqvq.config import ExperimentConfig, to_dict
    from mqvq.models.checkpoint import FORMAT, atomic_save

    old = _model(projection="taming")
    cfg = to_dict(ExperimentConfig())
    cfg["stage1"]["model"] = to_dict(old.config)
    del cfg["stage1"]["model"]["projection"]
    path = atomic_save({"format": FORMAT, "config": cfg, "model": old.state_dict()}, tmp_path / "model.pt")
    assert MQVAE.from_checkpoint(path).config.projection == "taming"


def test_ema_sum_starts_from_a_standard_normal_apart_from_the_uniform_codes():
    torch.manual_seed(0)
    vq = VectorQuantizer(512, 64)
    assert vq.embed.abs().max() <= 1 / 512  # codes: U(-1/K, 1/K) (first assignment only)
    assert 0.95 < vq.embed_sum.std() < 1.05 and abs(vq.embed_sum.mean()) < 0.02  # released embed_ema: N(0, 1)


def test_restart_noise_is_uniform_in_0_to_0_01_over_sqrt_d():
    torch.manual_seed(0)
    d = 16
    vq = VectorQuantizer(64, d).train()
    data = torch.randn(4, d)
    vq(data)  # 4 vectors < 64 codes: every code restarts from a tiled vector plus noise
    offsets = (vq.embed[:, None, :] - data[None]).abs().sum(-1).argmin(1)  # which batch vector each code came from
    noise = vq.embed - data[offsets]
    bound = 0.01 / d**0.5
    assert (noise >= -1e-7).all() and (noise < bound + 1e-7).all() and noise.std() > bound / 10


def test_learning_rate_starts_at_zero_and_warms_up_linearly():
    assert lr_at(0, 1.0, 10, 100, "cosine") == 0.0
    assert lr_at(5, 1.0, 10, 100, "cosine") == pytest.approx(0.5)
    assert lr_at(10, 1.0, 10, 100, "cosine") == pytest.approx(1.0)
    assert lr_at(0, 1.0, 0, 100, "constant") == 1.0  # no warm-up: the base rate from the first step


@pytest.mark.parametrize("kind,has_bn", [("mlp", False), ("mlp-bn", True), ("conv", True), ("conv-nobn", False)])
def test_scorer_variants(kind, has_bn):
    mod = AdaptiveMask(8, 0.5, kind, 16)
    assert any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in mod.modules()) == has_bn


def test_batchnorm_changes_the_scores_not_the_ranking():
    """BatchNorm over the batch's logits is one increasing affine map (weight > 0): it keeps the
    same positions as the plain MLP with the same weights, and only the modulation differs."""
    torch.manual_seed(0)
    plain, bn = AdaptiveMask(8, 0.5, "mlp", 16), AdaptiveMask(8, 0.5, "mlp-bn", 16)
    bn.scorer.net.load_state_dict(plain.scorer.net.state_dict())
    z = torch.randn(4, 8, 4, 4)
    a, b = plain(z), bn(z)
    assert torch.equal(a.positions, b.positions)
    assert not torch.allclose(a.scores, b.scores)


def test_double_forward_updates_the_ema_codebook_and_batchnorm_twice_per_step(tmp_path):
    from mqvq.experiments import load_experiment
    from mqvq.models.checkpoint import read_checkpoint
    from mqvq.stages.train_stage1 import train_stage1
    from mqvq.tracking import Tracker

    tracker = Tracker(None, tmp_path)
    seen = {}
    for double in (False, True):
        cfg = load_experiment(
            "mqvae-f16-adaptive-50",
            "smoke",
            [
                "stage1.train.steps=3",
                "stage1.loss.perceptual_weight=0",
                "stage1.model.mask.scorer=conv",
                f"stage1.train.double_forward={str(double).lower()}",
            ],
        )
        out = train_stage1(cfg, tracker, progress=False)
        state = read_checkpoint(out["model"])["model"]
        seen[double] = int(state["mask.scorer.net.4.num_batches_tracked"])
    assert seen == {False: 3, True: 6}


def test_initial_distributions_match_the_released_layers():
    """Layer by layer, the released MQ-VAE keeps PyTorch's default init (U(+-1/sqrt(fan_in)) for conv
    and linear weights and biases, GroupNorm / BatchNorm 1 and 0), U(+-1/d) for the mask token and
    U(+-1/K) for the codes; mqvq's cpu-profile model must start from the same distributions."""
    from mqvq.experiments import load_experiment

    torch.manual_seed(0)
    cfg = load_experiment("mqvae-f16-adaptive-50", "cpu", ["stage1.model.mask.scorer=conv"])
    m = MQVAE(cfg.stage1.model)
    checked = 0
    for name, mod in m.named_modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
            fan_in = mod.weight[0].numel()
            bound = 1 / fan_in**0.5
            assert mod.weight.abs().max() <= bound + 1e-6, name
            if mod.weight.numel() >= 256:  # enough samples for the spread of a uniform
                assert abs(mod.weight.std().item() * 3**0.5 / bound - 1) < 0.15, name
            if mod.bias is not None:
                assert mod.bias.abs().max() <= bound + 1e-6, name
            checked += 1
        elif isinstance(mod, (torch.nn.GroupNorm, torch.nn.BatchNorm2d)) and mod.affine:
            assert torch.equal(mod.weight, torch.ones_like(mod.weight)) and not mod.bias.any(), name
    assert checked > 20
    d, k = cfg.stage1.model.quantizer.dim, cfg.stage1.model.quantizer.codebook_size
    assert m.mask_code.abs().max() <= 1 / d and m.quantizer.embed.abs().max() <= 1 / k
    # the released scorer's hidden width is the encoder's channel count
    assert m.mask.scorer.net[1].out_channels == cfg.stage1.model.z_channels


def test_a_tree_outside_git_names_its_commit(monkeypatch):
    from mqvq.tracking.provenance import git_commit

    monkeypatch.setenv("MQVQ_GIT_COMMIT", "0123abc")
    assert git_commit() == "0123abc"
