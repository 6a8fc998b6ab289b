"""Stackformer and raster baseline: cached = uncached logits, Algorithm 1's guarantees, learning."""

import pytest
import torch

from mqvq.config import SamplingConfig, StackformerConfig
from mqvq.models.sampling import decode_step, filter_logits, generate, sample_from, sort_raster
from mqvq.models.stackformer import Stackformer, TokenShape, sequence_loss

CFG = StackformerConfig(
    kind="stackformer", preset="tiny", code_layers=2, position_layers=2, width=32, heads=4, dropout=0.0
)
GREEDY = SamplingConfig(top_k=1, top_p=1.0, temperature=1.0, top_k_pos=1, top_p_pos=1.0, temperature_pos=1.0)


def _model(kind="stackformer", classes=0, k=16, grid=(4, 4), n=10, seed=0):
    torch.manual_seed(seed)
    cfg = StackformerConfig(**{**CFG.__dict__, "kind": kind})
    return Stackformer(cfg, TokenShape(k, grid, n if kind == "stackformer" else grid[0] * grid[1], classes)).eval()


def _sequence(b, n, grid_len, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, k, (b, n), generator=g)
    positions = torch.stack([torch.randperm(grid_len, generator=g)[:n].sort().values for _ in range(b)])
    return codes, positions


@pytest.mark.parametrize("kind, classes", [("stackformer", 0), ("stackformer", 3), ("raster", 0), ("raster", 3)])
@pytest.mark.parametrize("static", [False, True])
def test_cached_steps_give_the_uncached_forward_logits_at_every_step(kind, classes, static):
    model = _model(kind, classes)
    b, n = 3, model.shape.length
    codes, positions = _sequence(b, n, 16, 16)
    if kind == "raster":
        positions = torch.arange(16).expand(b, -1)
    labels = torch.tensor([0, 2, 1]) if classes else None
    with torch.no_grad():
        code_ref, pos_ref = model(codes, positions, labels)
        model.setup_cache(b, torch.float32, torch.device("cpu"))
        token, position = model.prefix(labels, b, codes.device)[:, -1], torch.full((b,), model.sos_pos)
        for t in range(n):
            tt = torch.tensor(t) if static else t  # tensor t = the static-shape (CUDA-graph) path
            h, code_logits = model.code_step(token, position, tt)
            torch.testing.assert_close(code_logits, code_ref[:, t], rtol=1e-5, atol=1e-5)
            if kind == "stackformer":
                torch.testing.assert_close(model.position_step(h, codes[:, t], tt), pos_ref[:, t], rtol=1e-5, atol=1e-5)
            token, position = codes[:, t], positions[:, t]
        model.clear_cache()


@pytest.mark.parametrize("use_cache", [True, False])
def test_sampled_positions_are_unique_and_in_range(use_cache):
    model = _model(n=12)
    params = SamplingConfig(top_k=8, top_p=0.9, top_k_pos=16, top_p_pos=1.0, batch_size=32)
    s = generate(model, 32, params, generator=torch.Generator().manual_seed(0), use_cache=use_cache)
    assert s.codes.shape == s.positions.shape == (32, 12)
    assert (s.positions >= 0).all() and (s.positions < 16).all() and (s.codes >= 0).all() and (s.codes < 16).all()
    assert all(len(set(row.tolist())) == 12 for row in s.positions)
    r = generate(
        model, 16, SamplingConfig(enforce_raster=True, top_k_pos=16), generator=torch.Generator().manual_seed(1)
    )
    assert (r.positions[:, 1:] > r.positions[:, :-1]).all()
    codes, pos = sort_raster(s.codes, s.positions)
    assert (pos[:, 1:] > pos[:, :-1]).all() and torch.equal(codes.sort(1).values, s.codes.sort(1).values)


def test_cached_and_uncached_sampling_draw_the_same_samples():
    model = _model(n=8)
    params = SamplingConfig(top_k=5, top_p=0.9, top_k_pos=6, top_p_pos=0.9)
    a = generate(model, 6, params, generator=torch.Generator().manual_seed(3), use_cache=True)
    b = generate(model, 6, params, generator=torch.Generator().manual_seed(3), use_cache=False)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.positions, b.positions)


def test_top_k_one_is_deterministic():
    model = _model(n=10)
    a = generate(model, 4, GREEDY, generator=torch.Generator().manual_seed(0))
    b = generate(model, 4, GREEDY, generator=torch.Generator().manual_seed(123))
    assert torch.equal(a.codes, b.codes) and torch.equal(a.positions, b.positions)


def test_static_decode_step_matches_generate():
    model = _model(n=6)
    token, position = model.prefix(None, 2, torch.device("cpu"))[:, -1], torch.full((2,), model.sos_pos)
    used = torch.zeros(2, 16, dtype=torch.bool)
    codes = []
    model.setup_cache(2, torch.float32, torch.device("cpu"))
    for t in range(6):
        token, position, used = decode_step(model, token, position, used, torch.tensor(t), GREEDY)
        codes.append(token)
    model.clear_cache()
    assert torch.equal(torch.stack(codes, 1), generate(model, 2, GREEDY).codes)


def test_filters():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(filter_logits(logits, 2, None, 1.0)[0, 2:]).all()
    p = logits.softmax(-1)[0]
    kept = torch.isfinite(filter_logits(logits, None, float(p[0] + 0.01), 1.0))[0]
    assert kept.tolist() == [True, True, False, False, False]  # smallest set reaching top_p
    torch.testing.assert_close(filter_logits(logits, None, None, 2.0), logits / 2)
    counts = (
        torch.bincount(
            sample_from(torch.log(torch.tensor([[0.7, 0.2, 0.1]])).expand(20000, -1), torch.Generator().manual_seed(0)),
            minlength=3,
        )
        / 20000
    )
    torch.testing.assert_close(counts, torch.tensor([0.7, 0.2, 0.1]), atol=0.015, rtol=0)


def _fit(model, codes, positions, labels=None, steps=300, lr=3e-3):
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        loss, logs = model.loss(codes, positions, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return logs


@pytest.mark.parametrize("kind", ["stackformer", "raster"])
def test_teacher_forced_loss_overfits_a_tiny_set(kind):
    model = _model(kind, n=8)
    codes, positions = _sequence(4, model.shape.length, 16, 16, seed=5)
    logs = _fit(model, codes, positions, steps=250)
    # only the first code is unpredictable (four sequences share the <sos> prefix): the floor is ln(4) / N
    floor = torch.log(torch.tensor(float(len(set(codes[:, 0].tolist()))))) / model.shape.length
    assert logs["code_loss"] < floor + 0.05, (logs, floor)
    if kind == "stackformer":
        assert logs["position_loss"] < 0.05


def test_class_conditioning_changes_the_output_distribution():
    """Class c uses only codes 4c..4c+3: after training, each class samples its own codes."""
    model = _model(classes=2, n=6)
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(32) % 2
    codes = labels[:, None] * 4 + torch.randint(0, 4, (32, 6), generator=g)
    positions = torch.stack([torch.randperm(16, generator=g)[:6].sort().values for _ in range(32)])
    _fit(model, codes, positions, labels, steps=150)
    for c in (0, 1):
        s = generate(model, 64, SamplingConfig(top_k=16, top_p=1.0), cond=torch.full((64,), c), generator=g)
        inside = ((s.codes // 4) == c).float().mean()
        assert inside > 0.95, (c, inside)
    with pytest.raises(ValueError):
        generate(model, 2, GREEDY)  # class-conditional without labels


def test_raster_baseline_and_stackformer_share_blocks():
    stack, raster = _model("stackformer", n=16), _model("raster")
    assert type(stack.code_stack) is type(raster.code_stack) is type(stack.pos_stack)
    assert len(raster.code_stack.blocks) == len(stack.code_stack.blocks) + len(stack.pos_stack.blocks)  # same depth
    for i, blk in enumerate(list(stack.code_stack.blocks) + list(stack.pos_stack.blocks)):
        raster.code_stack.blocks[i].load_state_dict(blk.state_dict(), strict=True)  # same block, same parameters
    assert not hasattr(raster, "pos_stack") and stack.num_params() > raster.num_params()


def test_sequence_loss_is_code_plus_position():
    model = _model(n=8)
    codes, positions = _sequence(2, 8, 16, 16)
    code_logits, pos_logits = model(codes, positions)
    loss, logs = sequence_loss(code_logits, pos_logits, codes, positions)
    torch.testing.assert_close(loss, logs["code_loss"] + logs["position_loss"])


@pytest.mark.slow
@pytest.mark.integration
def test_compiled_decode_step_matches_eager_generation():
    """torch.compile(mode='reduce-overhead') of the static decode step (CUDA graphs on GPU); ~20 s to compile on CPU."""
    from mqvq.models.sampling import generate_compiled

    model = _model(n=8)
    a = generate_compiled(model, 3, GREEDY)
    b = generate(model, 3, GREEDY)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.positions, b.positions)
