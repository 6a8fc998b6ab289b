"""Algorithm 1: sample N (code, position) pairs, batched, with a KV cache.

Per step t: the Code-Transformer reads (M_t, P_t) and gives the next code's distribution ->
temperature, top-k, top-p -> sample M_{t+1}; the Position-Transformer reads the Code-T hidden
state plus e_c(M_{t+1}) -> positions already used (and <sos>) are masked -> temperature, top-k,
top-p -> sample P_{t+1}. Exactly N steps, so every sample has N unique positions. Sampling is
the exponential race argmax(p / E), E ~ Exp(1), which equals multinomial sampling and needs
no host sync. A condition (class token or caption) is a prefix written into the cache first.
Classifier-free guidance (`cfg_scale` != 1) runs the conditional and unconditional prefixes as
one batch of 2B, mixes their logits (code and position) and feeds both halves the same sample. With `use_cache=False` every step re-runs Code-T and then Position-T once each over
the whole prefix (the released sampler's cost, kept for benchmarks and equivalence tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mqvq.config import SamplingConfig
from mqvq.models.stackformer import Stackformer


def candidates(
    logits: torch.Tensor, top_k: int | None, top_p: float | None, temperature: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Temperature, then the top-k, then the smallest set with probability mass >= top_p, with one
    softmax over the k candidates only: (unnormalised probabilities (B, k), their vocabulary indices
    (B, k); None when every index is a candidate). Top-k sorts k values, never the vocabulary."""
    logits = logits.float() if temperature == 1.0 else logits.float() / temperature
    index = None
    if top_k is not None and top_k < logits.shape[-1]:
        logits, index = torch.topk(logits, top_k, dim=-1)  # sorted, largest first
    elif top_p is not None and top_p < 1.0:
        logits, index = torch.sort(logits, dim=-1, descending=True)
    probs = logits.softmax(-1)
    if top_p is not None and top_p < 1.0:
        probs = probs.masked_fill(probs.cumsum(-1) - probs >= top_p, 0.0)  # keep the token that crosses top_p
    return probs, index


def sample_logits(
    logits: torch.Tensor,
    top_k: int | None,
    top_p: float | None,
    temperature: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One vocabulary index per row, drawn from the filtered distribution: argmax(p / E), E ~ Exp(1),
    over the candidates only (no host sync; p need not be normalised)."""
    probs, index = candidates(logits, top_k, top_p, temperature)
    race = torch.empty_like(probs).exponential_(1.0, generator=generator)
    choice = (probs / race).argmax(-1, keepdim=True)
    return (choice if index is None else index.gather(-1, choice)).squeeze(-1)


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None, temperature: float) -> torch.Tensor:
    """The filtered distribution as full-vocabulary logits: logits / temperature, -inf where filtered out."""
    scaled = logits.float() / temperature
    probs, index = candidates(logits, top_k, top_p, temperature)
    if index is None:
        return scaled
    kept = torch.zeros_like(scaled, dtype=torch.bool).scatter(-1, index, probs > 0)
    return scaled.masked_fill(~kept, float("-inf"))


def sample_from(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row from softmax(logits), via argmax(p / Exp(1)) (no host sync)."""
    return sample_logits(logits, None, None, 1.0, generator)


@dataclass
class Samples:
    codes: torch.Tensor  # (B, N) in sampling order
    positions: torch.Tensor  # (B, N) unique grid positions


def guide(logits: torch.Tensor, scale: float, batch: int) -> torch.Tensor:
    """Classifier-free guidance over the stacked conditional and unconditional halves (2B, V) ->
    (B, V): c + (s - 1)(c - u), which is c exactly at s = 1."""
    cond, uncond = logits[:batch].float(), logits[batch:].float()
    return cond + (scale - 1.0) * (cond - uncond)


def start_prefix(model: Stackformer, cond: torch.Tensor | None, batch: int, guided: bool, device) -> torch.Tensor:
    """The condition's prefix (B, S); with guidance the unconditional prefix is stacked below it (2B, S)."""
    if guided and not model.conditional:
        raise ValueError("classifier-free guidance needs a class- or text-conditional model")
    prefix = model.prefix(cond, batch, device)
    return torch.cat([prefix, model.null_prefix(batch, device)]) if guided else prefix


def _twice(x: torch.Tensor, guided: bool) -> torch.Tensor:
    """Both halves of a guided batch read the same sampled tokens."""
    return torch.cat([x, x]) if guided else x


def decode_step(model: Stackformer, token, position, used, t, params: SamplingConfig, generator=None):
    """One cached step of Algorithm 1 with static shapes (tensor image step t): CUDA-graph friendly.
    `token`/`position` hold both halves under guidance; the sampled code/position hold one."""
    batch, guided = used.shape[0], params.cfg_scale != 1.0
    h_c, code_logits = model.code_step(token, position, t + (model.prefix_len - 1))
    if guided:
        code_logits = guide(code_logits, params.cfg_scale, batch)
    code = sample_logits(code_logits, params.top_k, params.top_p, params.temperature, generator)
    if model.raster:
        return code, t.expand_as(code), used
    pos_logits = model.position_step(h_c, _twice(code, guided), t).float()
    if guided:
        pos_logits = guide(pos_logits, params.cfg_scale, batch)
    pos = sample_logits(
        pos_logits.masked_fill(used, float("-inf")),
        params.top_k_pos,
        params.top_p_pos,
        params.temperature_pos,
        generator,
    )
    return code, pos, used.scatter(1, pos[:, None], True)


@torch.no_grad()
def generate_compiled(
    model: Stackformer,
    batch: int,
    params: SamplingConfig,
    cond: torch.Tensor | None = None,
    steps: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
) -> Samples:
    """`generate` with the decode step compiled as one CUDA graph (torch.compile reduce-overhead).

    Uses the global RNG (seed it with torch.manual_seed); recompiles once per (model, batch)."""
    device = device or next(model.parameters()).device
    if params.enforce_raster:
        raise ValueError("enforce_raster is not supported by the compiled sampler")
    n = steps or model.shape.length
    guided = params.cfg_scale != 1.0
    step = _compiled_step(model, params)
    model.eval()
    prefix = start_prefix(model, cond, batch, guided, device)
    token = prefix[:, -1]
    position = torch.full_like(token, model.sos_pos)
    used = torch.zeros(batch, model.shape.grid_len, dtype=torch.bool, device=device)
    codes, positions = [], []
    model.setup_cache(prefix.shape[0], dtype or next(model.parameters()).dtype, device)
    try:
        with torch.autocast(device.type, dtype=dtype) if dtype is not None else _null():
            if model.prefix_len > 1:
                model.prefill(prefix[:, :-1])
            for t in range(n):
                torch.compiler.cudagraph_mark_step_begin()
                code, pos, used = step(model, token, position, used, torch.tensor(t, device=device), params)
                code, pos, used = code.clone(), pos.clone(), used.clone()  # outputs live in graph memory
                codes.append(code)
                positions.append(pos)
                token, position = _twice(code, guided), _twice(pos, guided)
    finally:
        model.clear_cache()
    return Samples(torch.stack(codes, 1), torch.stack(positions, 1))


_COMPILED: dict = {}
_MAX_COMPILED = 4  # compiled steps pin CUDA-graph memory; a benchmark interleaves three models


def _compiled_step(model, params):
    key = (id(model), params)
    if key not in _COMPILED:
        while len(_COMPILED) >= _MAX_COMPILED:
            _COMPILED.pop(next(iter(_COMPILED)))  # the oldest
        _COMPILED[key] = torch.compile(decode_step, mode="reduce-overhead", fullgraph=True)
    return _COMPILED[key]


@torch.inference_mode()  # not just no_grad: no view or version tracking, 5-7 % faster on CPU
def generate(
    model: Stackformer,
    batch: int,
    params: SamplingConfig,
    cond: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    steps: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
) -> Samples:
    """Sample `batch` sequences of `steps` (default N) code/position pairs given the condition
    (class labels (B,) or caption ids (B, T); None for an unconditional model). With
    `params.cfg_scale` != 1 the conditional and unconditional halves run as one batch of 2B."""
    device = device or next(model.parameters()).device
    n = steps or model.shape.length
    if n > model.shape.length:
        raise ValueError(f"steps = {n} exceeds the model's sequence length {model.shape.length}")
    grid_len, guided, scale = model.shape.grid_len, params.cfg_scale != 1.0, params.cfg_scale
    model.eval()
    prefix = start_prefix(model, cond, batch, guided, device)
    rows, s = prefix.shape
    token = prefix[:, -1]
    position = torch.full((rows,), model.sos_pos, dtype=torch.long, device=device)
    codes = torch.empty(batch, n, dtype=torch.long, device=device)
    positions = torch.empty(batch, n, dtype=torch.long, device=device)
    used = torch.zeros(batch, grid_len, dtype=torch.bool, device=device)
    idx = torch.arange(grid_len, device=device)
    ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else _null()
    if use_cache:
        model.setup_cache(rows, dtype or next(model.parameters()).dtype, device)
    try:
        with ctx:
            if use_cache and s > 1:
                model.prefill(prefix[:, :-1])
            for t in range(n):
                if use_cache:
                    h_c, code_logits = model.code_step(token, position, s - 1 + t)
                else:  # the released cost: Code-T and Position-T each once over the whole prefix per token
                    h_c, code_logits = _uncached_code(
                        model, _twice(codes[:, :t], guided), _twice(positions[:, :t], guided), prefix
                    )
                if guided:
                    code_logits = guide(code_logits, scale, batch)
                code = sample_logits(code_logits, params.top_k, params.top_p, params.temperature, generator)
                codes[:, t] = code
                if model.raster:
                    pos = torch.full_like(code, t)
                else:
                    if use_cache:
                        pos_logits = model.position_step(h_c, _twice(code, guided), t)
                    else:
                        pos_logits = model.position_logits(h_c, _twice(codes[:, : t + 1], guided))[:, -1]
                    pos_logits = (
                        guide(pos_logits, scale, batch) if guided else pos_logits.float()
                    )  # a fresh tensor: in place
                    forbid = used
                    if params.enforce_raster:  # after the last position, leaving room for the remaining steps
                        forbid = used | (idx > grid_len - (n - t))
                        if t > 0:
                            forbid = forbid | (idx <= positions[:, t - 1, None])
                    pos_logits = pos_logits.masked_fill_(forbid, float("-inf"))
                    pos = sample_logits(
                        pos_logits, params.top_k_pos, params.top_p_pos, params.temperature_pos, generator
                    )
                    used.scatter_(1, pos[:, None], True)
                positions[:, t] = pos
                token, position = _twice(code, guided), _twice(pos, guided)
    finally:
        if use_cache:
            model.clear_cache()
    return Samples(codes, positions)


def _null():
    import contextlib

    return contextlib.nullcontext()


def _uncached_code(model, codes, positions, prefix):
    """Code-T over the prefix plus a dummy last slot (never read): hidden states (B, t+1, d) for the
    position step, and the last logits, which predict M_{t+1}."""
    pad = torch.zeros(codes.shape[0], 1, dtype=torch.long, device=codes.device)
    h_c = model.code_hidden(
        torch.cat([codes, pad], 1), None if model.raster else torch.cat([positions, pad], 1), prefix
    )
    return h_c, model.code_head(h_c[:, -1])


def sort_raster(codes: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reorder each sample's (code, position) pairs by position."""
    order = positions.argsort(dim=1)
    return codes.gather(1, order), positions.gather(1, order)
