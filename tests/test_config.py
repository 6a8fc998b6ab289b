"""Configs: every declared experiment resolves; invalid values fail at load time with a clear sentence."""

import pytest

from mqvq.config import ExperimentConfig, config_hash, field_help, num_kept, to_dict
from mqvq.errors import UserError
from mqvq.experiments import PROFILES, list_experiments, load_experiment

TABLE_ROWS = {  # experiment -> (mask type, ratio, demask, paper f)
    "vqgan-f32": ("none", 0.0, "none", 32),
    "vqgan-f16": ("none", 0.0, "none", 16),
    "mqvae-f16-adaptive-10": ("adaptive", 0.1, "dcsa-update", 16),
    "mqvae-f16-adaptive-25": ("adaptive", 0.25, "dcsa-update", 16),
    "mqvae-f16-adaptive-50": ("adaptive", 0.5, "dcsa-update", 16),
    "mqvae-f16-adaptive-75": ("adaptive", 0.75, "dcsa-update", 16),
    "mqvae-f16-random-25": ("random", 0.25, "dcsa-update", 16),
    "mqvae-f16-random-50": ("random", 0.5, "dcsa-update", 16),
    "mqvae-f16-random-75": ("random", 0.75, "dcsa-update", 16),
    "vqgan-star-f16": ("none", 0.0, "sa", 16),
    "mqvae-f16-adaptive-50-nodemask": ("adaptive", 0.5, "none", 16),
    "mqvae-f16-adaptive-50-sa": ("adaptive", 0.5, "sa", 16),
    "mqvae-f16-adaptive-50-dcsa": ("adaptive", 0.5, "dcsa", 16),
}


@pytest.mark.parametrize("name", sorted(TABLE_ROWS))
def test_table_6_and_7_rows_exist_with_paper_values(name):
    mask, ratio, demask, f = TABLE_ROWS[name]
    cfg = load_experiment(name, "paper", ["stage1.data.root=/data/ffhq"])
    m = cfg.stage1.model
    assert (m.mask.type, m.mask.ratio, m.demask.type, m.downsample) == (mask, ratio, demask, f)
    # paper profile = the paper's sizes: 256², K = 1024, H = 8, n_z = 256
    assert cfg.stage1.data.resolution == 256 and m.quantizer.codebook_size == 1024 and m.demask.layers == 8
    assert m.levels == (1, 1, 2, 2, 4, 4)[: {16: 5, 32: 6}[f]]


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_experiment_resolves_under_every_profile(profile):
    names = list_experiments()
    assert len(names) >= 16
    for name in names:
        cfg = load_experiment(name, profile)
        assert cfg.name == name and cfg.profile == profile


def test_profiles_keep_the_papers_latent_grids():
    grid = lambda n, p: load_experiment(n, p).stage1.data.resolution // load_experiment(n, p).stage1.model.downsample
    assert (grid("vqgan-f16", "paper"), grid("vqgan-f32", "paper")) == (16, 8)
    assert (grid("vqgan-f16", "mini"), grid("vqgan-f32", "mini")) == (16, 8)
    assert (grid("vqgan-f16", "smoke"), grid("vqgan-f32", "smoke")) == (8, 4)


def test_overrides_are_typed_and_win():
    cfg = load_experiment(
        "mqvae-f16-adaptive-25",
        "smoke",
        ["stage1.model.mask.ratio=0.5", "stage1.data.name=fashion-mnist", "stage1.model.channel_mult=[1, 2, 2]"],
        seed=3,
    )
    assert cfg.stage1.model.mask.ratio == 0.5 and cfg.stage1.data.name == "fashion-mnist" and cfg.seed == 3
    assert cfg.stage1.model.channel_mult == (1, 2, 2)


@pytest.mark.parametrize(
    "override, message",
    [
        ("stage1.model.mask.ratio=1.0", "outside [0, 1)"),
        ("stage1.model.mask.ratio=-0.1", "outside [0, 1)"),
        ("stage1.data.resolution=30", "not divisible by the downsampling factor"),
        ("stage1.model.mask.type=learned", "expected one of 'adaptive', 'random', 'none'"),
        ("stage1.model.nope=1", "unknown key stage1.model.nope"),
        ("stage1.train.steps=ten", "expected an integer"),
        ("stage1.train.steps=0", "must be at least 1"),
        ("stage1.model.downsample=3", "allowed values are 2, 4, 8, 16 and 32"),
        ("stage1.model.channel_mult=[1, 2]", "needs log2(f) + 1"),
        ("stage1.data.resolution=48", "power of two"),
        ("justtext", "must look like key=value"),
    ],
)
def test_invalid_values_fail_at_load_time(override, message):
    with pytest.raises(
        UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("+", r"\+")
    ):
        load_experiment("mqvae-f16-adaptive-25", "smoke", [override])


def test_mask_none_needs_ratio_zero_and_unknown_names():
    with pytest.raises(UserError, match="must be 0"):
        load_experiment("vqgan-f16", "smoke", ["stage1.model.mask.ratio=0.25"])
    with pytest.raises(UserError, match="unknown experiment 'nope'"):
        load_experiment("nope", "smoke")
    with pytest.raises(UserError, match="unknown profile"):
        load_experiment("vqgan-f16", "huge")


def test_fashion_mnist_resolutions():
    with pytest.raises(UserError, match="use 32 or 64"):
        load_experiment("vqgan-f16", "mini", ["stage1.data.resolution=128"])


def test_num_kept_matches_paper_definition():
    assert num_kept(256, 0.25) == 192 and num_kept(256, 0.5) == 128 and num_kept(256, 0.75) == 64
    assert num_kept(256, 0.1) == 230 and num_kept(1024, 0.0) == 1024 and num_kept(16, 0.99) == 1


def test_config_hash_ignores_seed_but_not_content():
    a = load_experiment("mqvae-f16-adaptive-25", "smoke", seed=0)
    b = load_experiment("mqvae-f16-adaptive-25", "smoke", seed=1)
    c = load_experiment("mqvae-f16-adaptive-50", "smoke")
    h = lambda cfg: config_hash(to_dict(cfg.stage1))
    assert h(a) == h(b) != h(c)


def test_every_field_has_a_meaning():
    rows = field_help(ExperimentConfig)
    assert len(rows) > 40 and all(help_ for _, _, help_ in rows)


def test_fields_added_later_leave_earlier_identities_alone():
    """cond_dropout, cfg_scale and the text fields came after runs were recorded: at their defaults
    they are not hashed (a store's finished runs stay found), set they are."""
    from mqvq.config import identity
    from mqvq.stages.lookup import stage2_hash

    cfg = load_experiment("mqvae-f16-adaptive-25", "smoke")
    assert "cond_dropout" not in identity(cfg.stage2)["train"] and "cfg_scale" not in identity(cfg.stage2)["sampling"]
    assert "text_length" not in identity(cfg.stage2)["model"] and "conditioning" in identity(cfg.stage2)["model"]
    assert stage2_hash(cfg, "abc") == "657989d33020fa2f"  # as computed before these fields existed
    assert config_hash(identity(cfg.stage1)) == "91b0d44cc91e6d4b"
    guided = load_experiment(
        "mqvae-f16-adaptive-25", "smoke", ["stage2.model.conditioning='class'", "stage2.train.cond_dropout=0.1"]
    )
    plain = load_experiment("mqvae-f16-adaptive-25", "smoke", ["stage2.model.conditioning='class'"])
    assert stage2_hash(guided, "d") != stage2_hash(plain, "d")
