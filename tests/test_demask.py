"""Direction-constrained self-attention (Eq. 5-8), tested on its own."""

import math

import pytest
import torch

from mqvq.models.demask import DeMask, key_weight_schedule
from mqvq.models.layers import dc_attention, dc_attention_reference


def _qkv(b=2, length=10, c=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, length, c, generator=g, dtype=torch.float64) for _ in range(3)]


def _keep(b=2, length=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(b, length, generator=g) < 0.5
    keep[:, 0] = True
    keep[:, 1] = False
    return keep


def test_weight_on_masked_key_is_b_times_softmax_weight_without_renormalisation():
    q, k, _ = _qkv()
    keep = _keep()
    b = torch.where(keep, 1.0, 0.02).double()
    length = q.shape[1]
    eye = torch.eye(length, dtype=q.dtype).expand(q.shape[0], -1, -1)
    attn = dc_attention(q, k, eye, b)  # with V = I the output *is* the attention matrix A
    soft = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), -1)
    torch.testing.assert_close(attn, soft * b[:, None, :])
    rows = attn.sum(-1)
    assert (rows < 1 - 1e-6).all()  # masked keys' share is not redistributed (Eq. 6 as released)


@pytest.mark.parametrize("renormalize", [False, True])
def test_fused_sdpa_equals_softmax_times_b_reference(renormalize):
    q, k, v = _qkv(c=8)
    b = torch.where(_keep(), 1.0, 0.3).double()
    torch.testing.assert_close(dc_attention(q, k, v, b, renormalize), dc_attention_reference(q, k, v, b, renormalize))
    torch.testing.assert_close(dc_attention(q, k, v), dc_attention_reference(q, k, v))


def test_zero_mask_value_blocks_masked_to_kept_flow():
    """B = 0 on masked keys: what masked positions carry (their values) cannot reach any output,
    while masked positions still read from kept ones."""
    q, k, v = _qkv()
    keep = _keep()
    b = torch.where(keep, 1.0, 0.0).double()
    out = dc_attention(q, k, v, b)
    v2 = torch.where(keep[..., None], v, torch.randn_like(v))  # change only masked-position values
    torch.testing.assert_close(dc_attention(q, k, v2, b), out)
    v3 = torch.where(keep[..., None], torch.randn_like(v), v)  # change only kept-position values
    changed = (dc_attention(q, k, v3, b) - out).abs().sum(-1)
    assert (changed[~keep] > 1e-6).all()  # masked queries receive information from kept keys


def test_released_eq6_lets_masked_keys_shift_the_softmax_denominator_renormalised_does_not():
    """Without renormalisation masked *keys* still enter the softmax denominator, so kept outputs move
    slightly when masked inputs change; `renormalize=True` (log-B bias) blocks masked inputs entirely."""
    q, k, v = _qkv()
    keep = _keep()
    b = torch.where(keep, 1.0, 0.0).double()
    noise = lambda x: torch.where(keep[..., None], x, torch.randn_like(x))
    for renorm, moves in ((False, True), (True, False)):
        out = dc_attention(q, k, v, b, renorm)
        out2 = dc_attention(noise(q), noise(k), noise(v), b, renorm)
        delta = (out2 - out)[keep].abs().max()
        assert (delta > 1e-6) if moves else (delta < 1e-12)


def test_mask_schedule_follows_sqrt_per_layer():
    keep = torch.tensor([[True, False]])
    sched = key_weight_schedule(keep, 8, 0.02, update=True)
    masked = [w[0, 1].item() for w in sched]
    expected = [0.02 ** (0.5**h) for h in range(8)]
    assert masked == pytest.approx(expected)
    assert masked == pytest.approx([0.02, 0.1414, 0.3761, 0.6133, 0.7831, 0.8849, 0.9407, 0.9699], abs=1e-4)
    assert all(w[0, 0].item() == 1.0 for w in sched)
    assert [w[0, 1].item() for w in key_weight_schedule(keep, 8, 0.02, update=False)] == pytest.approx([0.02] * 8)


def test_demask_module_variants():
    torch.manual_seed(0)
    h = torch.randn(2, 8, 3, 3)
    keep = torch.rand(2, 9) < 0.5
    keep[:, 0] = True
    mods = {v: DeMask(8, 2, v) for v in ("dcsa-update", "dcsa", "sa")}
    state = mods["sa"].state_dict()
    for m in mods.values():
        m.load_state_dict(state)
    all_kept = torch.ones(2, 9, dtype=torch.bool)
    ref = mods["sa"](h, keep)
    # with nothing masked, DC-SA is plain SA
    for v in ("dcsa-update", "dcsa"):
        torch.testing.assert_close(mods[v](h, all_kept), mods["sa"](h, all_kept))
        assert not torch.allclose(mods[v](h, keep), ref)
    assert not torch.allclose(mods["dcsa-update"](h, keep), mods["dcsa"](h, keep))
