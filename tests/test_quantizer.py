"""Vector quantizer: exact fp32 nearest code, EMA update, dead-code restart, losses, straight-through."""

import torch

from mqvq.models.quantizer import VectorQuantizer, perplexity


def test_nearest_code_matches_brute_force_fp64():
    torch.manual_seed(0)
    vq = VectorQuantizer(64, 16, update="loss")
    vq.embed.data.normal_()
    z = torch.randn(500, 16)
    ref = torch.cdist(z.double(), vq.embed.data.double()).argmin(1)
    assert torch.equal(vq.nearest(z), ref)


def test_nearest_is_fp32_even_under_autocast():
    torch.manual_seed(0)
    vq = VectorQuantizer(64, 16, update="loss")
    vq.embed.data.normal_()
    z = torch.randn(400, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        codes = vq(z)[1]
    assert torch.equal(codes, vq.nearest(z))


def test_ema_moves_codes_to_assigned_means_and_restarts_dead_codes():
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 2, decay=0.5, restart_dead=False).train()
    vq.embed.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0], [100.0, 100.0]]))
    vq.embed_sum.copy_(vq.embed)
    vq.cluster_size.fill_(1.0)
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [9.0, 11.0]])
    vq(z)
    # code 0 got mean (1, 0), code 1 got (9, 11): EMA with decay 0.5 moves halfway (before smoothing)
    expected0 = (0.5 * torch.tensor([0.0, 0.0]) + 0.5 * torch.tensor([2.0, 0.0])) / (0.5 + 0.5 * 2)
    assert torch.allclose(vq.embed[0], expected0, atol=1e-3)
    # restart: codes whose EMA usage drops below 1 are replaced by batch vectors
    vq2 = VectorQuantizer(8, 2, restart_dead=True).train()
    data = torch.randn(50, 2) * 3
    vq2(data)
    assert (vq2.cluster_size == 1).all()  # all started dead (usage 0) and were restarted
    dists = torch.cdist(vq2.embed, data).min(1).values
    assert (dists < 0.05).all()  # every code now sits on (or next to) a real vector


def test_restart_with_fewer_vectors_than_codes_gives_distinct_codes():
    torch.manual_seed(0)
    vq = VectorQuantizer(32, 4).train()
    vq(torch.randn(5, 4))
    assert torch.unique(vq.embed, dim=0).shape[0] == 32


def test_losses_and_straight_through_gradient():
    torch.manual_seed(0)
    for update in ("ema", "loss"):
        vq = VectorQuantizer(16, 4, beta=0.25, update=update).train()
        z = torch.randn(3, 7, 4, requires_grad=True)
        q, codes, loss, stats = vq(z)
        assert q.shape == z.shape and codes.shape == (3, 7) and stats["counts"].sum() == 21
        q.sum().backward(retain_graph=True)
        assert torch.equal(z.grad, torch.ones_like(z))  # straight-through
        z.grad = None
        loss.backward()
        assert z.grad.abs().sum() > 0  # commitment
        if update == "loss":
            assert vq.embed.grad is not None and vq.embed.grad.abs().sum() > 0
        else:
            assert not any(p.requires_grad for p in vq.parameters())


def test_eval_mode_does_not_touch_the_codebook():
    vq = VectorQuantizer(8, 2).eval()
    before = vq.embed.clone()
    vq(torch.randn(20, 2))
    assert torch.equal(before, vq.embed)


def test_perplexity():
    assert perplexity(torch.tensor([5.0, 5.0, 5.0, 5.0])).item() == torch.tensor(4.0).item()
    assert abs(perplexity(torch.tensor([10.0, 0.0, 0.0])).item() - 1.0) < 1e-5
