"""MQ-VAE: every Table 6/7 variant as a config value; encode/decode; the VQGAN path; hot-path hygiene."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from mqvq.config import num_kept
from mqvq.models import MQVAE
from mqvq.stages.train_stage1 import save_model

VARIANTS = [
    "vqgan-f32",
    "vqgan-f16",
    "vqgan-star-f16",
    "mqvae-f16-adaptive-10",
    "mqvae-f16-adaptive-75",
    "mqvae-f16-random-50",
    "mqvae-f16-adaptive-50-nodemask",
    "mqvae-f16-adaptive-50-sa",
    "mqvae-f16-adaptive-50-dcsa",
    "mqvae-f16-adaptive-50",
]


def _model(tiny, name, *extra):
    torch.manual_seed(0)
    cfg = tiny(name, "stage1.data.resolution=32", *extra)
    return MQVAE(cfg.stage1.model), cfg


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_trains_and_encodes(tiny, name):
    model, cfg = _model(tiny, name)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    out = model(x)
    assert out.recon.shape == x.shape
    (out.recon.abs().mean() + out.vq_loss).backward()
    assert model.decoder.conv_out.weight.grad is not None
    f = cfg.stage1.model.downsample
    length = (32 // f) ** 2
    enc = model.eval().encode(x)
    n = num_kept(length, cfg.stage1.model.mask.ratio)
    assert enc.codes.shape == enc.positions.shape == (3, n) and enc.keep.shape == (3, length)
    assert (enc.positions[:, 1:] > enc.positions[:, :-1]).all()
    assert enc.codes.max() < cfg.stage1.model.quantizer.codebook_size


@pytest.mark.parametrize("f, res", [(2, 16), (4, 32), (8, 32), (16, 64), (32, 64)])
def test_downsampling_factors_and_non_square_images(tiny, f, res):
    model, _ = _model(tiny, "mqvae-f16-adaptive-25", f"stage1.model.downsample={f}", f"stage1.data.resolution={res}")
    x = torch.randn(2, 3, res, 2 * res)
    out = model(x)
    assert out.recon.shape == x.shape and out.encoded.grid == (res // f, 2 * res // f)


def test_decode_of_encode_equals_forward_reconstruction(tiny):
    for name in ("mqvae-f16-adaptive-50", "vqgan-f16", "mqvae-f16-random-25"):
        model, _ = _model(tiny, name)
        model.eval()
        torch.manual_seed(1)
        x = torch.randn(2, 3, 32, 32)
        torch.manual_seed(2)
        with torch.no_grad():
            out = model(x)
        dec = model.decode(out.encoded.codes, out.encoded.positions, out.encoded.grid)
        torch.testing.assert_close(dec, out.recon, rtol=1e-4, atol=1e-4)  # forward adds z + (q - z): rounding only
        if name != "vqgan-f16":
            dec2 = model.decode(out.encoded.codes, out.encoded.positions)  # grid inferred from N and the ratio
            torch.testing.assert_close(dec2, dec)


def test_mask_ratio_zero_is_the_plain_vqgan_path(tiny):
    """`none` mask: all L positions in raster order, no mask code, VQGAN's quant/post-quant convs and mid block."""
    model, _ = _model(tiny, "vqgan-f16")
    model.eval()
    assert not hasattr(model, "mask_code")
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    enc, dec, vq = model.encoder, model.decoder, model.quantizer
    z = enc(x)  # VQGAN reference, written out
    b, c, h, w = z.shape
    zf = F.conv2d(z, model.quant_proj.weight[..., None, None], model.quant_proj.bias)  # quant_conv
    flat = zf.permute(0, 2, 3, 1).reshape(-1, zf.shape[1])
    codes = torch.cdist(flat.double(), vq.embed.double()).argmin(1)
    zq = vq.embed[codes].reshape(b, h, w, -1).permute(0, 3, 1, 2)
    hdec = dec.head.block2(dec.head.attn(dec.head.block1(dec.conv_in(model.post_quant(zq)))))
    ref = dec.conv_out(F.silu(dec.norm_out(dec.up(hdec))))
    torch.testing.assert_close(out.recon, ref, rtol=1e-4, atol=1e-5)
    assert torch.equal(out.encoded.codes, codes.reshape(b, -1))
    assert torch.equal(out.encoded.positions, torch.arange(h * w).expand(b, -1)) and out.encoded.keep.all()


def test_adaptive_at_ratio_zero_keeps_everything_and_never_uses_the_mask_code(tiny):
    model, _ = _model(tiny, "mqvae-f16-adaptive-25", "stage1.model.mask.ratio=0.0")
    out = model(torch.randn(2, 3, 32, 32))
    assert out.encoded.keep.all() and torch.equal(out.encoded.positions, torch.arange(64).expand(2, -1))
    out.recon.sum().backward()
    assert model.mask_code.grad is None or model.mask_code.grad.abs().sum() == 0


def test_save_load_gives_the_same_outputs(tiny, tmp_path):
    model, cfg = _model(tiny, "mqvae-f16-adaptive-50")
    model.train()
    model(torch.randn(4, 3, 32, 32))  # EMA update: buffers must round-trip too
    path = save_model(tmp_path / "m.pt", cfg, model, step=1, run_id="x")
    loaded = MQVAE.from_checkpoint(path)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    a, b = model(x), loaded(x)
    torch.testing.assert_close(a.recon, b.recon, rtol=0, atol=0)
    assert torch.equal(a.encoded.codes, b.encoded.codes)


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ["mqvae-f16-adaptive-50", "mqvae-f16-random-50", "vqgan-star-f16"])
def test_hot_path_has_no_host_sync_and_no_loop_over_the_batch(tiny, name):
    """On the meta device any .item()/.tolist()/nonzero (a GPU->CPU sync) raises; and the number of
    dispatched ops must not depend on the batch size (no Python loop over samples)."""
    from mqvq.models.losses import Stage1Loss

    model, cfg = _model(tiny, name)
    model = model.to("meta").train()
    loss_fn = Stage1Loss(cfg.stage1.loss).to("meta")
    counts = []
    for b in (5, 9):
        x = torch.randn(b, 3, 32, 32, device="meta")
        with _Ops() as ops:
            out = model(x)
            loss, _ = loss_fn.generator_loss(x, out.recon, out.vq_loss, model.last_layer(), step=10)
            loss.backward()
            d_loss, _ = loss_fn.discriminator_loss(x, out.recon)
            d_loss.backward()
        counts.append(ops.count)
    assert counts[0] == counts[1]
