"""Algorithm 1: sample N (code, position) pairs, batched, with a KV cache.

Per step t: the Code-Transformer reads (M_t, P_t) and gives the next code's distribution ->
temperature, top-k, top-p -> sample M_{t+1}; the Position-Transformer reads the Code-T hidden
state plus e_c(M_{t+1}) -> positions already used (and <sos>) are masked -> temperature, top-k,
top-p -> sample P_{t+1}. Exactly N steps, so every sample has N unique positions. Sampling is
the exponential race argmax(p / E), E ~ Exp(1), which equals multinomial sampling and needs
no host sync. With `use_cache=False` every step re-runs the whole prefix (the released
sampler's cost model, kept for benchmarks and equivalence tests).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mqvq.config import SamplingConfig
from mqvq.models.stackformer import Stackformer


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None, temperature: float) -> torch.Tensor:
    """Temperature, then keep the top-k, then the smallest set with probability mass >= top_p."""
    logits = logits.float() / temperature
    vocab = logits.shape[-1]
    if top_k is not None and top_k < vocab:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove = cum - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def sample_from(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row from softmax(logits), via argmax(p / Exp(1)) (no host sync)."""
    probs = logits.softmax(-1)
    race = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / race).argmax(-1)


@dataclass
class Samples:
    codes: torch.Tensor      # (B, N) in sampling order
    positions: torch.Tensor  # (B, N) unique grid positions


def decode_step(model: Stackformer, token, position, used, t, params: SamplingConfig, generator=None):
    """One cached step of Algorithm 1 with static shapes (tensor t): CUDA-graph friendly."""
    h_c, code_logits = model.code_step(token, position, t)
    code = sample_from(filter_logits(code_logits, params.top_k, params.top_p, params.temperature), generator)
    if model.raster:
        return code, t.expand_as(code), used
    pos_logits = model.position_step(h_c, code, t).float().masked_fill(used, float("-inf"))
    pos = sample_from(filter_logits(pos_logits, params.top_k_pos, params.top_p_pos, params.temperature_pos), generator)
    return code, pos, used.scatter(1, pos[:, None], True)


@torch.no_grad()
def generate_compiled(model: Stackformer, batch: int, params: SamplingConfig, labels: torch.Tensor | None = None,
                      steps: int | None = None, dtype: torch.dtype | None = None, device: torch.device | None = None) -> Samples:
    """`generate` with the decode step compiled as one CUDA graph (torch.compile reduce-overhead).

    Uses the global RNG (seed it with torch.manual_seed); recompiles once per (model, batch)."""
    device = device or next(model.parameters()).device
    if params.enforce_raster:
        raise ValueError("enforce_raster is not supported by the compiled sampler")
    n = steps or model.shape.length
    step = _compiled_step(model, params)
    model.eval()
    token = model.first_token(labels, batch, device)
    position = torch.full((batch,), model.sos_pos, dtype=torch.long, device=device)
    used = torch.zeros(batch, model.shape.grid_len, dtype=torch.bool, device=device)
    codes, positions = [], []
    model.setup_cache(batch, dtype or next(model.parameters()).dtype, device)
    try:
        with (torch.autocast(device.type, dtype=dtype) if dtype is not None else _null()):
            for t in range(n):
                torch.compiler.cudagraph_mark_step_begin()
                token, position, used = step(model, token, position, used, torch.tensor(t, device=device), params)
                token, position, used = token.clone(), position.clone(), used.clone()  # outputs live in graph memory
                codes.append(token)
                positions.append(position)
    finally:
        model.clear_cache()
    return Samples(torch.stack(codes, 1), torch.stack(positions, 1))


_COMPILED: dict = {}


def _compiled_step(model, params):
    key = (id(model), params)
    if key not in _COMPILED:
        _COMPILED.clear()  # one compiled step at a time: they pin memory
        _COMPILED[key] = torch.compile(decode_step, mode="reduce-overhead", fullgraph=True)
    return _COMPILED[key]


@torch.no_grad()
def generate(model: Stackformer, batch: int, params: SamplingConfig, labels: torch.Tensor | None = None,
             generator: torch.Generator | None = None, use_cache: bool = True, steps: int | None = None,
             dtype: torch.dtype | None = None, device: torch.device | None = None) -> Samples:
    """Sample `batch` sequences of `steps` (default N) code/position pairs."""
    device = device or next(model.parameters()).device
    n = steps or model.shape.length
    if n > model.shape.length:
        raise ValueError(f"steps = {n} exceeds the model's sequence length {model.shape.length}")
    grid_len = model.shape.grid_len
    model.eval()
    token = model.first_token(labels, batch, device)
    position = torch.full((batch,), model.sos_pos, dtype=torch.long, device=device)
    codes = torch.empty(batch, n, dtype=torch.long, device=device)
    positions = torch.empty(batch, n, dtype=torch.long, device=device)
    used = torch.zeros(batch, grid_len, dtype=torch.bool, device=device)
    idx = torch.arange(grid_len, device=device)
    ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else _null()
    if use_cache:
        model.setup_cache(batch, dtype or next(model.parameters()).dtype, device)
    try:
        with ctx:
            for t in range(n):
                if use_cache:
                    h_c, code_logits = model.code_step(token, position, t)
                else:
                    h_c, code_logits = _uncached_code(model, codes[:, :t], positions[:, :t], labels, batch, device)
                code = sample_from(filter_logits(code_logits, params.top_k, params.top_p, params.temperature), generator)
                codes[:, t] = code
                if model.raster:
                    pos = torch.full_like(code, t)
                else:
                    if use_cache:
                        pos_logits = model.position_step(h_c, code, t)
                    else:
                        pos_logits = _uncached_position(model, codes[:, : t + 1], positions[:, :t], labels)
                    forbid = used
                    if params.enforce_raster:  # after the last position, leaving room for the remaining steps
                        forbid = used | (idx > grid_len - (n - t))
                        if t > 0:
                            forbid = forbid | (idx <= position[:, None])
                    pos_logits = pos_logits.float().masked_fill(forbid, float("-inf"))
                    pos = sample_from(filter_logits(pos_logits, params.top_k_pos, params.top_p_pos, params.temperature_pos), generator)
                    used = used.scatter(1, pos[:, None], True)
                positions[:, t] = pos
                token, position = code, pos
    finally:
        if use_cache:
            model.clear_cache()
    return Samples(codes, positions)


def _null():
    import contextlib

    return contextlib.nullcontext()


def _uncached_code(model, codes, positions, labels, batch, device):
    """Full forward over the prefix plus a dummy last slot: logits at index t predict M_{t+1}."""
    pad = torch.zeros(batch, 1, dtype=torch.long, device=device)
    code_logits, _ = _prefix_forward(model, torch.cat([codes, pad], 1), torch.cat([positions, pad], 1), labels)
    return None, code_logits[:, -1]


def _uncached_position(model, codes, positions, labels):
    pad = torch.zeros(positions.shape[0], 1, dtype=torch.long, device=positions.device)
    _, pos_logits = _prefix_forward(model, codes, torch.cat([positions, pad], 1), labels)
    return pos_logits[:, -1]


def _prefix_forward(model, codes, positions, labels):
    return model(codes, None if model.raster else positions, labels)


def sort_raster(codes: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reorder each sample's (code, position) pairs by position."""
    order = positions.argsort(dim=1)
    return codes.gather(1, order), positions.gather(1, order)
