"""The faster stage-1 objective equals the plain one: LPIPS without gradients through the real images,
and the adaptive GAN weight from gradients at the reconstruction (LPIPS and D walked back once)."""

import pytest
import torch
from torch.func import functional_call

from mqvq.models import MQVAE
from mqvq.models.losses import Stage1Loss
from mqvq.models.lpips import LPIPS


def _setup(tiny, seed=0):
    torch.manual_seed(seed)
    cfg = tiny(
        "mqvae-f16-adaptive-25",
        "stage1.data.resolution=32",
        "stage1.loss.disc_start=0",
        "stage1.loss.disc_weight_max=10000",
    ).stage1  # lam unclamped: the ratio itself is compared
    model = MQVAE(cfg.model).train()
    lpips = LPIPS("vgg")
    for p in lpips.parameters():  # random but fixed trunk and linear weights
        p.data.normal_(0, 0.05)
    loss_fn = Stage1Loss(cfg.loss, lpips)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    return cfg, model, loss_fn, x


def _plain_generator_loss(loss_fn, images, recon, vq_loss, last_layer):
    """Today's computation, written out: the loss as one graph, lam from two full gradients."""
    c = loss_fn.cfg
    n = images.shape[0]
    feats = loss_fn.lpips.net((torch.cat([images, recon]) - loss_fn.lpips.shift) / loss_fn.lpips.scale)
    p = 0.0
    for i, f in enumerate(feats):
        f = f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        p = p + getattr(loss_fn.lpips, f"lin{i}").model((f[:n] - f[n:]).pow(2)).mean(dim=(2, 3))
    nll = c.l1_weight * (images - recon).abs().mean() + c.perceptual_weight * p.flatten().mean()
    params = {k: v.detach() for k, v in loss_fn.disc.named_parameters()}
    g = -functional_call(loss_fn.disc, {**params, **dict(loss_fn.disc.named_buffers())}, (recon,)).mean()
    g_nll = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_g = torch.autograd.grad(g, last_layer, retain_graph=True)[0]
    lam = ((g_nll.norm() / (g_g.norm() + 1e-4)).clamp(0.0, 1e4).detach() * c.disc_weight).clamp_max(c.disc_weight_max)
    return nll + c.codebook_weight * vq_loss + lam * g, lam


@pytest.mark.parametrize("seed", [0, 1])
def test_generator_loss_gradients_equal_the_plain_computation(tiny, seed):
    cfg, model, loss_fn, x = _setup(tiny, seed)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def grads(fn):
        model.load_state_dict(state)  # the EMA codebook and BatchNorm update in a forward: same start
        model.zero_grad(set_to_none=True)
        torch.manual_seed(seed)
        out = model(x)
        loss, lam = fn(out)
        loss.backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}, lam, loss

    fast, lam_fast, _ = grads(
        lambda out: (lambda r: (r[0], r[1]["lam"]))(
            loss_fn.generator_loss(x, out.recon, out.vq_loss, model.last_layer(), step=0)
        )
    )
    plain, lam_plain, plain_loss = grads(
        lambda out: _plain_generator_loss(loss_fn, x, out.recon, out.vq_loss, model.last_layer())
    )
    assert set(fast) == set(plain) and len(plain) > 10
    assert lam_fast.item() == pytest.approx(lam_plain.item(), rel=1e-5)
    assert 0 < lam_plain.item() < cfg.loss.disc_weight_max  # the adaptive weight is really in play
    # fp32 rounding of sums taken in another order, carried back through the encoder: relative to each
    # tensor's scale (on an AMD EPYC the two paths differ by up to 1.3e-4 in the first encoder layers,
    # 2e-5 on the Intel machine this was written on; a wrong loss differs by ~1e-1), plus noise at 1e-6
    # of the largest gradient (biases feeding a GroupNorm have a true gradient of zero, ~1e-8 computed)
    floor = 1e-6 * max(g.abs().max().item() for g in plain.values())
    for k in plain:
        torch.testing.assert_close(fast[k], plain[k], rtol=0, atol=3e-4 * plain[k].abs().max().item() + floor, msg=k)
    # what is logged is the loss itself, not the surrogate the backward runs on
    torch.manual_seed(seed)
    model.load_state_dict(state)
    out = model(x)
    _, logs = loss_fn.generator_loss(x, out.recon, out.vq_loss, model.last_layer(), step=0)
    assert logs["loss"].item() == pytest.approx(plain_loss.item(), rel=1e-5)
    assert not any(p.grad is not None and p.grad.abs().sum() > 0 for p in loss_fn.disc.parameters())  # D untouched


def test_lpips_without_gradients_through_the_real_side_is_the_same_distance():
    torch.manual_seed(0)
    lpips = LPIPS("vgg")
    for p in lpips.parameters():
        p.data.normal_(0, 0.05)
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    y_grad = y.clone().requires_grad_(True)
    split = lpips(x, y_grad)  # the real side under no_grad, two trunk passes
    with torch.no_grad():
        batched = lpips(x, y)  # one trunk pass over both
    torch.testing.assert_close(split.detach(), batched, rtol=1e-5, atol=1e-7)
    split.sum().backward()
    y_ref = y.clone().requires_grad_(True)
    n = x.shape[0]
    feats = lpips.net((torch.cat([x, y_ref]) - lpips.shift) / lpips.scale)
    ref = 0.0
    for i, f in enumerate(feats):
        f = f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        ref = ref + getattr(lpips, f"lin{i}").model((f[:n] - f[n:]).pow(2)).mean(dim=(2, 3))
    ref.sum().backward()
    torch.testing.assert_close(y_grad.grad, y_ref.grad, rtol=1e-4, atol=1e-8)


def test_the_cpu_training_layout_gives_the_same_step(tiny):
    """channels_last (the stage-1 layout on CPU) changes speed, not the numbers: same losses and gradients."""
    from mqvq.runtime import conv_layout

    layout = conv_layout(torch.device("cpu"))
    assert layout == torch.channels_last
    results = []
    for fmt in (torch.contiguous_format, layout):
        cfg, model, loss_fn, x = _setup(tiny)
        model.to(memory_format=fmt)
        loss_fn.to(memory_format=fmt)
        torch.manual_seed(0)
        out = model(x.contiguous(memory_format=fmt))
        g, logs = loss_fn.generator_loss(
            x.contiguous(memory_format=fmt), out.recon, out.vq_loss, model.last_layer(), step=0
        )
        g.backward()
        d, _ = loss_fn.discriminator_loss(x.contiguous(memory_format=fmt), out.recon)
        d.backward()
        results.append(
            (
                logs["loss"].item(),
                d.item(),
                {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None},
                {k: p.grad.clone() for k, p in loss_fn.disc.named_parameters()},
            )
        )
    (l0, d0, g0, dg0), (l1, d1, g1, dg1) = results
    assert l0 == pytest.approx(l1, rel=1e-4) and d0 == pytest.approx(
        d1, rel=1e-4
    )  # other conv algorithms: fp32 rounding
    # other convolution algorithms round differently: in this small random-weight model that moves the
    # gradients by up to ~3e-4 of their scale, as running with 2 threads instead of 1 does; gradients
    # that are zero in exact arithmetic (D's last bias under the hinge loss) come out at ~2e-5 of the largest
    for grads_a, grads_b in ((g0, g1), (dg0, dg1)):
        floor = 1e-4 * max(v.abs().max().item() for v in grads_a.values())
        for k in grads_a:
            torch.testing.assert_close(
                grads_b[k], grads_a[k], rtol=0, atol=1e-3 * grads_a[k].abs().max().item() + floor, msg=k
            )
