"""Metrics: Fréchet distance against SciPy, feature backends from files only, usage, IS, mask quality."""

from unittest import mock

import numpy as np
import pytest
import scipy.linalg
import torch

from mqvq.errors import UserError
from mqvq.metrics.codebook import codebook_usage, effective_usage
from mqvq.metrics.features import INCEPTION_FILE, InceptionFeatures, VGG16Features, metric_names
from mqvq.metrics.frechet import FeatureStats, RunningStats, frechet_distance, inception_score
from mqvq.metrics.mask import MaskTally, border_positions, token_foreground
from mqvq.stages.reconstruction import reconstruction_metrics


def _stats(x):
    s = RunningStats(x.shape[1])
    for chunk in np.array_split(x, 3):
        s.update(chunk)
    return s.finalize()


def _scipy_fd(a, b):
    covmean = scipy.linalg.sqrtm(a.sigma @ b.sigma).real
    return float(((a.mu - b.mu) ** 2).sum() + np.trace(a.sigma) + np.trace(b.sigma) - 2 * np.trace(covmean))


def test_running_stats_match_numpy():
    x = np.random.default_rng(0).normal(size=(500, 7))
    s = _stats(x)
    np.testing.assert_allclose(s.mu, x.mean(0), atol=1e-12)
    np.testing.assert_allclose(s.sigma, np.cov(x, rowvar=False), atol=1e-10)


def test_frechet_distance_self_zero_different_larger_and_agrees_with_scipy():
    rng = np.random.default_rng(0)
    d = 16
    a_x = rng.normal(size=(400, d))
    b_x = rng.normal(loc=0.3, scale=1.5, size=(400, d)) @ rng.normal(size=(d, d)) * 0.5
    a, b = _stats(a_x), _stats(b_x)
    assert abs(frechet_distance(a, a)) < 1e-8
    fd = frechet_distance(a, b)
    assert fd > 1.0
    assert fd == pytest.approx(_scipy_fd(a, b), rel=1e-8)
    assert frechet_distance(b, a) == pytest.approx(fd, rel=1e-8)
    # closed form for diagonal Gaussians
    g1 = FeatureStats(np.zeros(3), np.diag([1.0, 4.0, 9.0]), 10)
    g2 = FeatureStats(np.ones(3), np.diag([4.0, 4.0, 1.0]), 10)
    expected = 3.0 + sum((np.sqrt(x) - np.sqrt(y)) ** 2 for x, y in [(1, 4), (4, 4), (9, 1)])
    assert frechet_distance(g1, g2) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_is_robust_to_singular_covariances():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10, 64))  # fewer samples than dimensions: rank-deficient covariance
    a, b = _stats(x), _stats(x + 0.1)
    assert np.isfinite(frechet_distance(a, b)) and frechet_distance(a, b) == pytest.approx(0.64, rel=1e-4)


def test_inception_score():
    uniform = torch.zeros(100, 10)
    assert inception_score(uniform, 5)[0] == pytest.approx(1.0)
    confident = torch.full((100, 10), -30.0)
    confident[torch.arange(100), torch.arange(100) % 10] = 30.0
    assert inception_score(confident, 5)[0] == pytest.approx(10.0, rel=1e-6)


@pytest.fixture(scope="session")
def inception_file(tmp_path_factory):
    """Random weights in the exact FID Inception-v3 architecture (566 tensors, 23.9M parameters)."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    with (
        mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}),
        mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None),
    ):
        torch.manual_seed(0)
        model = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path_factory.mktemp("inception") / INCEPTION_FILE
    torch.save(model.state_dict(), path)
    return path


def accept_stand_in(monkeypatch, path) -> None:
    """A stub for what the test environment cannot hold: the real 96 MB Inception file. The random-weight
    stand-in passes the SHA-256 check because the catalog's digest and size are swapped for its own."""
    import hashlib

    from mqvq.models import pretrained as P

    w = P.CATALOG["inception"]
    monkeypatch.setitem(
        P.CATALOG,
        "inception",
        P.Weights(w.key, w.file, w.urls, hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size, w.what),
    )


def test_inception_backend_loads_the_exact_architecture(inception_file, monkeypatch):
    monkeypatch.setenv("MQVQ_INCEPTION_WEIGHTS", str(inception_file))
    accept_stand_in(monkeypatch, inception_file)
    backend = InceptionFeatures(torch.device("cpu"))
    assert sum(v.numel() for v in backend.model.state_dict().values() if v.dtype.is_floating_point) > 23_000_000
    feats, logits = backend(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert feats.shape == (2, 2048) and logits.shape == (2, 1008) and torch.isfinite(feats).all()


def test_inception_backend_errors_clearly_without_a_file(tmp_path, monkeypatch):
    monkeypatch.delenv("MQVQ_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("MQVQ_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(
        UserError, match=f"{INCEPTION_FILE}, .*downloading is off.*put it there; or use --backend vgg16"
    ):
        InceptionFeatures(torch.device("cpu"))
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(3)}, bad)
    with pytest.raises(
        UserError, match=f"bad.pth is .* bytes, not the 95,628,359 of {INCEPTION_FILE} .*SHA-256 6726825d"
    ):
        InceptionFeatures(torch.device("cpu"), str(bad))  # refused before torch reads it
    accept_stand_in(monkeypatch, bad)  # the right size and digest, but not Inception's tensors
    with pytest.raises(UserError, match="is not an FID Inception-v3 state dict"):
        InceptionFeatures(torch.device("cpu"), str(bad))


def test_vgg16_backend_and_metric_names():
    b = VGG16Features(torch.device("cpu"), resolution=32)
    feats, logits = b(torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8))
    assert feats.shape == (3, 512) and logits is None and b.resolution == 32
    assert VGG16Features(torch.device("cpu"), resolution=16).resolution == 32
    assert VGG16Features(torch.device("cpu"), resolution=256).resolution == 224
    assert metric_names("vgg16") == {"fid": "fd_vgg16", "rfid": "rfd_vgg16"}
    assert metric_names("inception") == {"fid": "fid", "rfid": "rfid"}


def test_codebook_usage_is_exact_on_a_hand_made_code_map():
    class Fixed(torch.nn.Module):
        """A stand-in stage-1 model whose code map is given: usage must count exactly these codes."""

        def __init__(self, code_maps):
            super().__init__()
            self.maps, self.i = code_maps, 0
            from types import SimpleNamespace

            self.config = SimpleNamespace(
                quantizer=SimpleNamespace(codebook_size=10), mask=SimpleNamespace(type="none")
            )

        def forward(self, x, fg=None):  # MQVAE.forward(images, fg=None)
            from mqvq.models.mqvae import Encoded, Stage1Output

            codes = self.maps[self.i : self.i + x.shape[0]]
            self.i += x.shape[0]
            enc = Encoded(
                codes, torch.arange(4).expand(len(codes), -1), torch.ones(len(codes), 4, dtype=torch.bool), None, (2, 2)
            )
            return Stage1Output(x, torch.zeros(()), enc, torch.zeros(10))

    from mqvq.config import DataConfig
    from mqvq.data import build_dataset

    ds = build_dataset(DataConfig(name="procedural", resolution=8, num_train=2, num_test=5), "test")
    maps = torch.tensor([[0, 0, 1, 1], [1, 2, 2, 2], [0, 1, 2, 3], [3, 3, 3, 3], [0, 0, 0, 0]])
    res = reconstruction_metrics(Fixed(maps), ds, torch.device("cpu"), batch_size=2)
    assert res.counts.tolist() == [7, 4, 4, 5, 0, 0, 0, 0, 0, 0]
    assert res.metrics["usage"] == pytest.approx(40.0) and codebook_usage(torch.tensor([0, 3, 0, 1])) == 50.0
    assert res.metrics["psnr"] > 100  # the stand-in reconstructs perfectly


def test_mask_diagnostics_on_hand_made_masks():
    """Two images on a 4 x 4 grid with known foreground, keep mask and scores: every value by hand."""
    fg = torch.zeros(2, 16, 16, dtype=torch.bool)
    fg[0, 4:12, 4:12] = True  # image 0: the 2 x 2 centre tokens (5, 6, 9, 10)
    fg[1, 0:4, 0:8] = True  # image 1: tokens 0 and 1 (on the border)
    tokens = token_foreground(fg, (4, 4))
    assert tokens[0].nonzero().flatten().tolist() == [5, 6, 9, 10] and tokens[1].nonzero().flatten().tolist() == [0, 1]
    keep = torch.zeros(2, 16, dtype=torch.bool)
    keep[0, [5, 6, 0, 15]] = True  # 2 of 4 kept on the object, 2 on the border background
    keep[1, [0, 2, 3, 4]] = True  # 1 of 4 kept on the object
    scores = torch.full((2, 16), 0.25)
    scores[0, [5, 6, 9, 10]] = 0.75
    scores[1, [0, 1]] = 0.5
    tally = MaskTally((4, 4))
    tally.add(keep[:1], fg[:1], scores[:1])  # batches accumulate
    tally.add(keep[1:], fg[1:], scores[1:])
    r = tally.result()
    assert r["mask_fg_precision"] == pytest.approx(3 / 8)  # kept tokens on the object / kept tokens
    assert r["mask_fg_recall"] == pytest.approx(3 / 6)  # object tokens kept / object tokens
    assert r["fg_token_fraction"] == pytest.approx(6 / 32)  # what a random mask's precision would be
    assert r["mask_score_fg"] == pytest.approx((4 * 0.75 + 2 * 0.5) / 6)
    assert r["mask_score_bg"] == pytest.approx(0.25)
    ring = border_positions((4, 4))
    assert ring.sum() == 12 and not ring[[5, 6, 9, 10]].any()
    # border kept: image 0 keeps 0, 15; image 1 keeps 0, 2, 3, 4 -> 6 of 2 x 12; centre: image 0 keeps 5, 6 -> 2 of 2 x 4
    assert r["mask_keep_border"] == pytest.approx(6 / 24) and r["mask_keep_centre"] == pytest.approx(2 / 8)
    freq = tally.keep_frequency()
    assert freq.shape == (4, 4) and freq[0, 0] == 1.0 and freq[1, 1] == 0.5 and freq[2, 2] == 0.0
    assert tally.fg_frequency()[0, 0] == 0.5 and tally.fg_frequency()[1, 1] == 0.5


def test_random_mask_precision_is_the_foreground_fraction():
    """The sanity check the curves rely on: a uniformly random keep mask's precision ~ fg fraction."""
    g = torch.Generator().manual_seed(0)
    fg = torch.rand(4000, 8, 8, generator=g) < 0.39  # one pixel per token
    keep = torch.rand(4000, 64, generator=g).argsort(1) < 32
    images = torch.rand(4000, 3, 32, 32, generator=g)
    tally = MaskTally((8, 8))
    tally.add(keep, fg, images=images)
    r = tally.result()
    assert abs(r["mask_fg_precision"] - r["fg_token_fraction"]) < 0.01 and "mask_score_fg" not in r
    assert abs(r["mask_detail_ratio"] - 1) < 0.01


def test_edge_and_detail_diagnostics():
    """Kept tokens on the outline and on detailed patches, by hand; no foreground mask needed for detail."""
    fg = torch.zeros(1, 8, 8, dtype=torch.bool)
    fg[0, :, :3] = True  # 2 x 2 grid of 4 x 4 patches: the left column is partly foreground
    images = torch.zeros(1, 3, 8, 8)
    images[0, :, :4, :4] = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).repeat(2, 2)  # token 0 detailed, the rest flat
    keep = torch.tensor([[True, False, False, True]])
    tally = MaskTally((2, 2))
    tally.add(keep, fg, images=images)
    r = tally.result()
    assert r["edge_token_fraction"] == 0.5 and r["mask_edge_precision"] == 0.5  # tokens 0, 2 are outline; 0 kept
    assert r["mask_detail_ratio"] == pytest.approx((0.5 / 2) / (0.5 / 4))  # std 0.5 in token 0 only
    # the score's correlation with brightness and detail, against numpy over the 4 tokens
    scores = torch.tensor([[0.9, 0.2, 0.4, 0.3]])
    with_scores = MaskTally((2, 2))
    with_scores.add(keep, fg, scores, images)
    r = with_scores.result()
    bright = torch.nn.functional.adaptive_avg_pool2d(images.mean(1, keepdim=True), (2, 2)).flatten().numpy()
    detail = torch.tensor([0.5, 0.0, 0.0, 0.0]).numpy()
    assert r["mask_score_corr_brightness"] == pytest.approx(np.corrcoef(scores[0].numpy(), bright)[0, 1])
    assert r["mask_score_corr_detail"] == pytest.approx(np.corrcoef(scores[0].numpy(), detail)[0, 1])
    plain = MaskTally((2, 2))
    plain.add(keep, images=images)  # a folder dataset: no foreground
    assert set(plain.result()) == {"mask_keep_border", "mask_detail_ratio"}


def test_effective_usage_differs_where_used_at_least_once_saturates():
    even, skewed = torch.full((8,), 100.0), torch.tensor([993.0, 1, 1, 1, 1, 1, 1, 1])
    assert codebook_usage(even) == codebook_usage(skewed) == 100.0
    from mqvq.models.quantizer import perplexity

    assert effective_usage(perplexity(even).item(), 8) == pytest.approx(100.0)
    assert effective_usage(perplexity(skewed).item(), 8) < 15.0


def test_reference_stats_cache_survives_concurrent_writers(tmp_path):
    """Study workers often cache the same split's statistics at once: every write must land whole."""
    from concurrent.futures import ThreadPoolExecutor

    from mqvq.stages.reference import save_stats

    stats = FeatureStats(np.arange(64.0), np.eye(64), 10)
    path = tmp_path / "fid_stats" / "vgg16-key.npz"
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: save_stats(stats, path), range(64)))
    loaded = FeatureStats.load(path)
    assert loaded.n == 10 and np.array_equal(loaded.mu, stats.mu) and np.array_equal(loaded.sigma, stats.sigma)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def test_validation_during_training_and_eval_measure_psnr_and_lpips_alike():
    """One definition of the reconstruction distances (metrics/pixels.py): the training loop's validation
    pass and `mqvq eval`'s reconstruction metrics give the same PSNR and LPIPS on the same model and images."""
    from mqvq.experiments import load_experiment
    from mqvq.data import build_dataset
    from mqvq.models.mqvae import MQVAE
    from mqvq.stages.train_stage1 import validation_pass

    cfg = load_experiment("vqgan-f16", "smoke", ["stage1.data.resolution=32"])
    torch.manual_seed(0)
    model = MQVAE(cfg.stage1.model).eval()
    ds = build_dataset(cfg.stage1.data, "test")

    def lpips(a, b):  # a stand-in distance with LPIPS's shape: (B, 1, 1, 1), sensitive to the 64-px upsampling
        assert a.shape[-1] == 64
        return (a - b).abs().mean(dim=(1, 2, 3), keepdim=True)

    val, _ = validation_pass(model, ds, torch.device("cpu"), None, 8, 16, lpips=lpips)
    ev = reconstruction_metrics(model, ds, torch.device("cpu"), lpips=lpips, batch_size=8, limit=16)
    assert val["psnr"] == pytest.approx(ev.metrics["psnr"]) and val["lpips"] == pytest.approx(ev.metrics["lpips"])
