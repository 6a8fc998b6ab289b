"""The faster sampler draws from the same distributions: filtering on the top-k candidates only equals
the full-vocabulary filter it replaced, and greedy sampling picks the same tokens."""

import pytest
import torch

from mqvq.config import SamplingConfig
from mqvq.models.sampling import candidates, generate, sample_logits


def _full_vocabulary_filter(logits, top_k, top_p, temperature):
    """The filter before this change, as it was: mask beyond the k-th value, then sort the whole
    vocabulary for top-p, softmax twice, scatter back."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove = cum - sorted_logits.softmax(-1) >= top_p
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits.softmax(-1)


def _as_full(probs, index, vocab):
    probs = probs / probs.sum(-1, keepdim=True)
    return probs if index is None else torch.zeros(probs.shape[0], vocab).scatter(-1, index, probs)


@pytest.mark.parametrize(
    "top_k,top_p,temperature",
    [
        (100, 0.95, 1.0),
        (10, 0.95, 1.0),
        (100, None, 1.0),
        (None, 0.9, 1.0),
        (None, None, 0.7),
        (1024, 0.5, 1.3),
        (5, 1.0, 2.0),
    ],
)
def test_filtered_probabilities_equal_the_full_vocabulary_filter(top_k, top_p, temperature):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 1024, generator=g) * 3
    logits[:8, 500:] = float("-inf")  # positions already used are -inf in the position step
    probs, index = candidates(logits, top_k, top_p, temperature)
    torch.testing.assert_close(
        _as_full(probs, index, 1024), _full_vocabulary_filter(logits, top_k, top_p, temperature), atol=1e-6, rtol=0
    )


def test_draws_follow_the_filtered_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1]])).expand(40000, -1)
    draws = sample_logits(logits, 3, 0.8, 1.0, torch.Generator().manual_seed(1))
    freq = torch.bincount(draws, minlength=4) / draws.numel()
    # top-3 renormalised: 5/9, 5/18, 1/6 (cumulative 0.56, 0.83, 1); top-p 0.8 keeps the first two,
    # the second being the one that crosses 0.8
    torch.testing.assert_close(freq, torch.tensor([2 / 3, 1 / 3, 0.0, 0.0]), atol=0.01, rtol=0)


@pytest.mark.parametrize("kind", ["stackformer", "raster"])
def test_greedy_samples_are_the_argmax_path(kind):
    """top-k 1 is greedy: every step takes the argmax of the full logits, cached or not."""
    from tests.test_stackformer import _model

    model = _model(kind)
    greedy = SamplingConfig(top_k=1, top_p=1.0, top_k_pos=1, top_p_pos=1.0)
    cached = generate(model, 3, greedy)
    uncached = generate(model, 3, greedy, use_cache=False)
    assert torch.equal(cached.codes, uncached.codes) and torch.equal(cached.positions, uncached.positions)
    # the first step by hand: argmax of the code logits after <sos>
    slot = torch.zeros(3, 1, dtype=torch.long)  # a dummy last slot: step 1 reads only <sos>
    first = model.code_head(
        model.code_hidden(slot, None if model.raster else slot, model.prefix(None, 3, slot.device))[:, -1]
    ).argmax(-1)
    assert torch.equal(cached.codes[:, 0], first)
