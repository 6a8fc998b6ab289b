"""Metrics: Fréchet distance against SciPy, feature backends from files only, usage, IS, mask quality."""
from unittest import mock

import numpy as np
import pytest
import scipy.linalg
import torch

from mqvq.errors import UserError
from mqvq.metrics.features import INCEPTION_FILE, InceptionFeatures, VGG16Features, metric_names
from mqvq.metrics.frechet import FeatureStats, RunningStats, frechet_distance, inception_score
from mqvq.metrics.recon import codebook_usage, mask_quality, reconstruction_metrics, token_foreground


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

    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None):
        torch.manual_seed(0)
        model = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path_factory.mktemp("inception") / INCEPTION_FILE
    torch.save(model.state_dict(), path)
    return path


def test_inception_backend_loads_the_exact_architecture(inception_file, monkeypatch):
    monkeypatch.setenv("MQVQ_INCEPTION_WEIGHTS", str(inception_file))
    backend = InceptionFeatures(torch.device("cpu"))
    assert sum(v.numel() for v in backend.model.state_dict().values() if v.dtype.is_floating_point) > 23_000_000
    feats, logits = backend(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert feats.shape == (2, 2048) and logits.shape == (2, 1008) and torch.isfinite(feats).all()


def test_inception_backend_errors_clearly_without_a_file(tmp_path, monkeypatch):
    monkeypatch.delenv("MQVQ_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("MQVQ_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(UserError, match=f"put {INCEPTION_FILE}.*never downloads.*--backend vgg16"):
        InceptionFeatures(torch.device("cpu"))
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(3)}, bad)
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
            self.config = SimpleNamespace(quantizer=SimpleNamespace(codebook_size=10), mask=SimpleNamespace(type="none"))

        def forward(self, x):
            from mqvq.models.mqvae import Encoded, Stage1Output
            codes = self.maps[self.i: self.i + x.shape[0]]
            self.i += x.shape[0]
            enc = Encoded(codes, torch.arange(4).expand(len(codes), -1), torch.ones(len(codes), 4, dtype=torch.bool), None, (2, 2))
            return Stage1Output(x, torch.zeros(()), enc, torch.zeros(10))

    from mqvq.config import DataConfig
    from mqvq.data import build_dataset

    ds = build_dataset(DataConfig(name="procedural", resolution=8, num_train=2, num_test=5), "test")
    maps = torch.tensor([[0, 0, 1, 1], [1, 2, 2, 2], [0, 1, 2, 3], [3, 3, 3, 3], [0, 0, 0, 0]])
    res = reconstruction_metrics(Fixed(maps), ds, torch.device("cpu"), batch_size=2)
    assert res.counts.tolist() == [7, 4, 4, 5, 0, 0, 0, 0, 0, 0]
    assert res.metrics["usage"] == pytest.approx(40.0) and codebook_usage(torch.tensor([0, 3, 0, 1])) == 50.0
    assert res.metrics["psnr"] > 100  # the stand-in reconstructs perfectly


def test_mask_quality_on_hand_made_masks():
    fg = torch.zeros(1, 8, 8, dtype=torch.bool)
    fg[0, :4, :4] = True  # top-left quadrant -> token 0 of a 2x2 grid
    tokens = token_foreground(fg, (2, 2))
    assert tokens.tolist() == [[True, False, False, False]]
    q = mask_quality(torch.tensor([[True, True, False, False]]), tokens)
    assert (int(q["kept_fg"]), int(q["kept"]), int(q["fg"]), int(q["tokens"])) == (1, 2, 1, 4)


def test_reference_stats_cache_survives_concurrent_writers(tmp_path):
    """Study workers often cache the same split's statistics at once: every write must land whole."""
    from concurrent.futures import ThreadPoolExecutor

    from mqvq.metrics.reference import save_stats

    stats = FeatureStats(np.arange(64.0), np.eye(64), 10)
    path = tmp_path / "fid_stats" / "vgg16-key.npz"
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: save_stats(stats, path), range(64)))
    loaded = FeatureStats.load(path)
    assert loaded.n == 10 and np.array_equal(loaded.mu, stats.mu) and np.array_equal(loaded.sigma, stats.sigma)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
