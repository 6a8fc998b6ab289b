"""Text conditioning (§3.3) and classifier-free guidance: the caption prefix, the tokenizer, guided sampling."""

import random

import pytest
import torch

from mqvq.config import SamplingConfig, StackformerConfig
from mqvq.data.procedural import ATTRIBUTES, caption, render_all
from mqvq.models.sampling import decode_step, generate, guide
from mqvq.models.stackformer import Stackformer, TokenShape, sequence_loss
from mqvq.models.text import PAD, UNK, WordTokenizer, from_dict, words

CFG = StackformerConfig(
    kind="stackformer", preset="tiny", code_layers=2, position_layers=2, width=32, heads=4, dropout=0.0
)
T, V = 5, 12


def _model(kind="stackformer", text=True, classes=0, n=8, seed=0):
    torch.manual_seed(seed)
    cfg = StackformerConfig(**{**CFG.__dict__, "kind": kind})
    length = n if kind == "stackformer" else 16
    return Stackformer(cfg, TokenShape(16, (4, 4), length, classes, V if text else 0, T if text else 0)).eval()


def _data(b, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (b, n), generator=g)
    positions = torch.stack([torch.randperm(16, generator=g)[:n].sort().values for _ in range(b)])
    text = torch.randint(2, V, (b, T), generator=g)
    text[:, -2:] = PAD  # captions shorter than T are padded
    return codes, positions, text


def test_text_tokens_occupy_the_prefix_at_sos_positions():
    model = _model()
    codes, positions, text = _data(3, 8)
    seen = {}
    # the first call of each embedding is Code-T's input; a hook returning None leaves the output as it is
    model.tok_emb.register_forward_hook(lambda m, i, o: None if "tok" in seen else seen.update(tok=i[0]))
    model.pos_emb.register_forward_hook(lambda m, i, o: None if "pos" in seen else seen.update(pos=i[0]))
    code_logits, pos_logits = model(codes, positions, text)
    assert code_logits.shape == (3, 8, 16) and pos_logits.shape == (3, 8, 16)  # one prediction per image token only
    assert seen["tok"].shape == (3, T + 8 - 1) and model.abs_emb.shape[1] == T + 8 - 1
    assert torch.equal(seen["tok"][:, :T], text + model.text_offset)  # the caption, after codes, <sos> and classes
    assert torch.equal(seen["tok"][:, T:], codes[:, :-1])  # then the shifted codes
    assert (seen["pos"][:, :T] == model.sos_pos).all()  # the same number of <sos> positions
    assert torch.equal(seen["pos"][:, T:], positions[:, :-1])


def test_the_loss_ignores_the_prefix_and_reads_the_caption():
    model = _model()
    codes, positions, text = _data(4, 8)
    loss, logs = model.loss(codes, positions, text)
    code_logits, pos_logits = model(codes, positions, text)
    expect = torch.nn.functional.cross_entropy(code_logits.flatten(0, 1), codes.flatten())
    torch.testing.assert_close(logs["code_loss"], expect)  # targets are the N codes: no text token is ever predicted
    other = text.clone()
    other[:, 0] = (other[:, 0] + 1 - 2) % (V - 2) + 2
    assert not torch.allclose(model(codes, positions, other)[0], code_logits)  # the caption conditions every step
    dropped = model(codes, positions, text, drop=torch.tensor([True, False, True, False]))[0]
    null = model(codes, positions, torch.zeros_like(text))[0]  # a dropped caption is all padding
    torch.testing.assert_close(dropped[0], null[0])
    torch.testing.assert_close(dropped[1], code_logits[1])


@pytest.mark.parametrize("kind", ["stackformer", "raster"])
def test_cached_prefill_and_steps_give_the_uncached_logits(kind):
    model = _model(kind)
    n = model.shape.length
    codes, positions, text = _data(3, n)
    if kind == "raster":
        positions = torch.arange(16).expand(3, -1)
    with torch.no_grad():
        code_ref, pos_ref = model(codes, positions, text)
        prefix = model.prefix(text, 3, codes.device)
        model.setup_cache(3, torch.float32, torch.device("cpu"))
        model.prefill(prefix[:, :-1])
        token, position = prefix[:, -1], torch.full((3,), model.sos_pos)
        for t in range(n):
            h, logits = model.code_step(token, position, T - 1 + t)
            torch.testing.assert_close(logits, code_ref[:, t], rtol=1e-5, atol=1e-5)
            if kind == "stackformer":
                torch.testing.assert_close(model.position_step(h, codes[:, t], t), pos_ref[:, t], rtol=1e-5, atol=1e-5)
            token, position = codes[:, t], positions[:, t]
        model.clear_cache()


def test_tokenizer_round_trips_and_is_rebuilt_identically():
    _, _, _, attrs = render_all(0, 0, 200, 16)
    caps = [caption({k: int(v[i]) for k, v in attrs.items()}) for i in range(200)]
    tok = WordTokenizer.build(caps, 100)
    for c in caps[:20]:
        ids = tok.encode([c], 32)[0]
        assert tok.decode(ids) == " ".join(words(c)) == c  # procedural captions are already lower-case words
    shuffled = caps[:]
    random.Random(0).shuffle(shuffled)
    assert WordTokenizer.build(shuffled, 100).vocab == tok.vocab  # the same captions, in any order
    assert from_dict(tok.to_dict()).vocab == tok.vocab
    assert tok.vocab[:2] == ["<pad>", "<unk>"] and len(WordTokenizer.build(caps, 10).vocab) == 10
    out = tok.encode(["a zebra circle", "a red circle at the top left and two more shapes on a plain background"], 4)
    assert out.shape == (2, 4) and out[0, 1] == UNK and out[0, 3] == PAD  # unknown words, padding, truncation
    assert tok.unknown("A Zebra!") == ["zebra", "!"]
    assert set(ATTRIBUTES["colour"]) <= set(tok.vocab)


def _fit(model, codes, positions, cond, steps, drop=0.0, lr=3e-3):
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        d = torch.rand(codes.shape[0], generator=g) < drop if drop else None
        loss, _ = sequence_loss(*model(codes, positions, cond, d), codes, positions)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def _two_captions(b=32, n=6, seed=0):
    """Caption word 2 -> codes 0..3, word 3 -> codes 8..11 (the rest of the caption is noise)."""
    g = torch.Generator().manual_seed(seed)
    which = torch.arange(b) % 2
    codes = which[:, None] * 8 + torch.randint(0, 4, (b, n), generator=g)
    positions = torch.stack([torch.randperm(16, generator=g)[:n].sort().values for _ in range(b)])
    text = torch.randint(4, V, (b, T), generator=g)
    text[:, 0] = 2 + which
    return codes, positions, text


def test_different_prompts_change_the_output_distribution():
    model = _model(n=6)
    codes, positions, text = _two_captions()
    _fit(model, codes, positions, text, 250)
    g = torch.Generator().manual_seed(1)
    for word, low in ((2, 0), (3, 8)):
        prompt = text[text[:, 0] == word][torch.arange(64) % 16]  # captions with this word (and their noise)
        s = generate(model, 64, SamplingConfig(top_k=16, top_p=1.0), prompt, g)
        inside = ((s.codes >= low) & (s.codes < low + 4)).float().mean()
        assert inside > 0.95, (word, inside)


def test_guidance_scale_one_is_no_guidance_exactly():
    logits = torch.randn(6, 16)
    assert torch.equal(guide(logits, 1.0, 3), logits[:3])  # c + 0 * (c - u)
    model = _model()
    _, _, text = _data(4, 8)
    base = SamplingConfig(top_k=8, top_p=0.9, top_k_pos=6)
    a = generate(model, 4, base, text, torch.Generator().manual_seed(0))
    b = generate(
        model, 4, SamplingConfig(top_k=8, top_p=0.9, top_k_pos=6, cfg_scale=1.0), text, torch.Generator().manual_seed(0)
    )
    assert torch.equal(a.codes, b.codes) and torch.equal(a.positions, b.positions)
    # scale 0 is the unconditional model: c + (0 - 1)(c - u) = u
    u = generate(model, 4, base, torch.zeros_like(text), torch.Generator().manual_seed(0))
    z = generate(
        model, 4, SamplingConfig(top_k=8, top_p=0.9, top_k_pos=6, cfg_scale=0.0), text, torch.Generator().manual_seed(0)
    )
    assert torch.equal(u.codes, z.codes) and torch.equal(u.positions, z.positions)


@pytest.mark.parametrize(
    "kind, text, classes",
    [("stackformer", True, 0), ("stackformer", False, 3), ("raster", True, 0), ("raster", False, 3)],
)
def test_cached_guided_sampling_equals_uncached_step_by_step(kind, text, classes):
    model = _model(kind, text, classes)
    cond = _data(5, 8)[2] if text else torch.tensor([0, 1, 2, 0, 1])
    params = SamplingConfig(top_k=6, top_p=0.9, top_k_pos=6, top_p_pos=0.9, cfg_scale=2.5)
    a = generate(model, 5, params, cond, torch.Generator().manual_seed(4), use_cache=True)
    b = generate(model, 5, params, cond, torch.Generator().manual_seed(4), use_cache=False)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.positions, b.positions)
    # the static-shape step (the CUDA-graph path) takes the same guided steps
    greedy = SamplingConfig(top_k=1, top_p=1.0, top_k_pos=1, top_p_pos=1.0, cfg_scale=2.5)
    prefix = torch.cat([model.prefix(cond, 5, torch.device("cpu")), model.null_prefix(5, torch.device("cpu"))])
    model.setup_cache(10, torch.float32, torch.device("cpu"))
    if model.prefix_len > 1:
        model.prefill(prefix[:, :-1])
    token, position = prefix[:, -1], torch.full((10,), model.sos_pos)
    used, steps = torch.zeros(5, 16, dtype=torch.bool), []
    with torch.no_grad():
        for t in range(model.shape.length):
            code, pos, used = decode_step(model, token, position, used, torch.tensor(t), greedy)
            steps.append(code)
            token, position = torch.cat([code, code]), torch.cat([pos, pos])
    model.clear_cache()
    assert torch.equal(torch.stack(steps, 1), generate(model, 5, greedy, cond).codes)


def test_guidance_strengthens_a_weak_condition():
    """Trained with condition dropout, the guided sampler follows the caption more often than the plain one."""
    model = _model(n=6)
    codes, positions, text = _two_captions(64)
    noisy = codes.clone()
    flip = torch.rand(64, generator=torch.Generator().manual_seed(2)) < 0.35  # a third of the pairs disagree
    noisy[flip] = (noisy[flip] + 8) % 16
    _fit(model, noisy, positions, text, 200, drop=0.2)
    prompt = torch.full((256, T), 5)
    prompt[:, 0] = 2
    rate = {}
    for scale in (1.0, 4.0):
        s = generate(
            model, 256, SamplingConfig(top_k=16, top_p=1.0, cfg_scale=scale), prompt, torch.Generator().manual_seed(3)
        )
        rate[scale] = (s.codes < 4).float().mean().item()
    assert rate[4.0] > rate[1.0] + 0.1, rate


def test_guidance_needs_a_conditional_model():
    with pytest.raises(ValueError, match="class- or text-conditional"):
        generate(_model(text=False), 2, SamplingConfig(cfg_scale=2.0))
    with pytest.raises(ValueError, match="caption ids"):
        generate(_model(), 2, SamplingConfig())
