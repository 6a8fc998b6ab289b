"""GPT blocks (minGPT / nanoGPT layout: pre-LN, causal SDPA, 4x GELU MLP) with a static KV cache.

Shared by the Stackformer's two stacks and the raster baseline. A `Stack` runs either a whole
sequence (training, teacher forcing), a prefix written into an empty cache (`forward(x, 0)`
with several tokens: a condition's prefill), or one new token per sequence against its cache
(sampling). The cache is preallocated for the full length; a step writes position t and
attends to positions 0..t. With an int t that is a slice (cheapest in eager mode); with a
tensor t the shapes stay static (masked attention over the whole cache), which is what CUDA
graphs need.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class KVCache(nn.Module):
    def __init__(self, batch: int, heads: int, length: int, head_dim: int, dtype: torch.dtype, device: torch.device):
        super().__init__()
        shape = (batch, heads, length, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer(
            "causal", torch.ones(length, length, dtype=torch.bool, device=device).tril(), persistent=False
        )

    def update(self, t, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Write k, v (B, H, n, D) at positions t..t+n-1 (n > 1 only from t = 0); return the keys,
        values and mask to attend to."""
        if isinstance(t, int):
            n = k.shape[2]
            if n > 1 and t != 0:
                raise ValueError("several tokens are written to the cache only as a prefill from position 0")
            self.k[:, :, t : t + n] = k
            self.v[:, :, t : t + n] = v
            return self.k[:, :, : t + n], self.v[:, :, : t + n], None
        self.k.index_copy_(2, t.reshape(1), k)
        self.v.index_copy_(2, t.reshape(1), v)
        return self.k, self.v, self.causal[t].reshape(1, 1, 1, -1)


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.resid_drop = nn.Dropout(dropout)
        self.cache: KVCache | None = None

    def forward(self, x: torch.Tensor, t=None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, N, D)
        if t is None:  # whole sequence, causal
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
            )
        else:  # one new token against the cache
            k, v, mask = self.cache.update(t, k, v)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=n > 1)  # n > 1: a prefill from 0
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, n, c)))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(width), CausalSelfAttention(width, heads, dropout)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, t=None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), t)
        return x + self.mlp(self.ln2(x))


class Stack(nn.Module):
    """`layers` Blocks; `setup_cache` enables one-token steps with `forward(x, t)`."""

    def __init__(self, layers: int, width: int, heads: int, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, heads, dropout) for _ in range(layers))
        self.width, self.heads = width, heads

    def setup_cache(self, batch: int, length: int, dtype: torch.dtype, device: torch.device) -> None:
        for blk in self.blocks:
            blk.attn.cache = KVCache(batch, self.heads, length, self.width // self.heads, dtype, device)

    def clear_cache(self) -> None:
        for blk in self.blocks:
            blk.attn.cache = None

    def forward(self, x: torch.Tensor, t=None) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x, t)
        return x


def init_weights(module: nn.Module) -> None:
    """minGPT init: N(0, 0.02) for Linear/Embedding, zero biases, LayerNorm 1/0."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
