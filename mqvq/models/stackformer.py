"""Stackformer (paper §3.3, Eq. 9-14) and the raster baseline, one class.

Token layout (vocabulary K + 1 + C): codes 0..K-1, <sos> = K, class c = K + 1 + c.
Position layout (L + 1): grid positions 0..L-1, <sos> = L.

For a raster-ordered sequence (M_1..M_N, P_1..P_N) with prefix (M_0, P_0) = (<sos> or class, <sos>):

    U_c = e_c(M_0..M_{N-1}) + e_p(P_0..P_{N-1}) + abs(0..N-1)          Eq. 10 (+ learned absolute position)
    H_c = CodeTransformer(U_c)      ->  p(M_t | M_<t, P_<t)   = head_c(H_c[t-1])       Eq. 11
    U_p = H_c + e_c(M_1..M_N)       (the *current* code)                            Eq. 12
    H_p = PositionTransformer(U_p)  ->  p(P_t | M_<=t, P_<t)  = head_p(H_p[t-1])       Eq. 13
    L   = CE_code + CE_position                                                      Eq. 14

`kind = "raster"` is the VQGAN-transformer baseline (Table 6's 0 % rows): the same Code-Transformer
blocks over all L codes in raster order with known positions, no Position-Transformer; its
depth is code_layers + position_layers, so both models have the same number of blocks. Heads
predict codes only (K) and grid positions only (L): the released code's heads also cover the
special tokens and mask them at sampling time, which is the same distribution at sampling.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from mqvq.config import StackformerConfig
from mqvq.models.transformer import Stack, init_weights


@dataclass(frozen=True)
class TokenShape:
    """What a Stackformer models: K codes on an h x w grid, N kept per image, C classes."""
    codebook_size: int
    grid: tuple[int, int]
    length: int          # N tokens per image (L for the raster baseline)
    num_classes: int = 0

    @property
    def grid_len(self) -> int:
        return self.grid[0] * self.grid[1]


class Stackformer(nn.Module):
    def __init__(self, cfg: StackformerConfig, shape: TokenShape):
        super().__init__()
        self.cfg, self.shape = cfg, shape
        k, grid_len, n, d = shape.codebook_size, shape.grid_len, shape.length, cfg.width
        self.raster = cfg.kind == "raster"
        self.sos, self.sos_pos = k, grid_len
        self.tok_emb = nn.Embedding(k + 1 + shape.num_classes, d)   # e_c, shared by both stacks (as released)
        self.pos_emb = nn.Embedding(grid_len + 1, d)                # e_p: grid position of each token
        self.abs_emb = nn.Parameter(torch.zeros(1, n, d))           # learned absolute sequence position (zero init, as released)
        self.drop = nn.Dropout(cfg.dropout)
        code_layers = cfg.code_layers + (cfg.position_layers if self.raster else 0)
        self.code_stack = Stack(code_layers, d, cfg.heads, cfg.dropout)
        self.code_head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, k, bias=False))
        if not self.raster:
            self.pos_stack = Stack(cfg.position_layers, d, cfg.heads, cfg.dropout)
            self.pos_head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, grid_len, bias=False))
        self.apply(init_weights)

    # ------------------------------------------------------------------ helpers
    def first_token(self, labels: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        if self.shape.num_classes:
            if labels is None:
                raise ValueError("a class-conditional Stackformer needs labels")
            return labels.to(device) + self.sos + 1
        return torch.full((batch,), self.sos, dtype=torch.long, device=device)

    def raster_positions(self, batch: int, length: int, device: torch.device) -> torch.Tensor:
        return torch.arange(length, device=device).expand(batch, -1)

    # ------------------------------------------------------------------ teacher forcing
    def forward(self, codes: torch.Tensor, positions: torch.Tensor | None = None, labels: torch.Tensor | None = None):
        """codes, positions (B, N) raster order -> code logits (B, N, K), position logits (B, N, L) or None."""
        h_c = self.code_hidden(codes, positions, labels)
        code_logits = self.code_head(h_c)
        if self.raster:
            return code_logits, None
        return code_logits, self.position_logits(h_c, codes)

    def code_hidden(self, codes: torch.Tensor, positions: torch.Tensor | None, labels: torch.Tensor | None) -> torch.Tensor:
        """Code-T over the shifted inputs (<sos>, M_1..M_{N-1}): (B, N, d); the last code is never read."""
        b, n = codes.shape
        if self.raster or positions is None:
            positions = self.raster_positions(b, n, codes.device)
        v_in = torch.cat([self.first_token(labels, b, codes.device)[:, None], codes[:, :-1]], 1)
        p_in = torch.cat([torch.full((b, 1), self.sos_pos, device=codes.device, dtype=torch.long), positions[:, :-1]], 1)
        return self.code_stack(self.drop(self.tok_emb(v_in) + self.pos_emb(p_in) + self.abs_emb[:, :n]))

    def position_logits(self, h_c: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Position-T over Code-T's hidden states plus each step's own code: (B, N, L)."""
        return self.pos_head(self.pos_stack(h_c + self.tok_emb(codes)))

    def loss(self, codes: torch.Tensor, positions: torch.Tensor | None, labels: torch.Tensor | None = None):
        return sequence_loss(*self(codes, positions, labels), codes, positions)

    # ------------------------------------------------------------------ cached decoding
    def setup_cache(self, batch: int, dtype: torch.dtype, device: torch.device) -> None:
        self.code_stack.setup_cache(batch, self.shape.length, dtype, device)
        if not self.raster:
            self.pos_stack.setup_cache(batch, self.shape.length, dtype, device)

    def clear_cache(self) -> None:
        self.code_stack.clear_cache()
        if not self.raster:
            self.pos_stack.clear_cache()

    def code_step(self, token: torch.Tensor, position: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Input token/position (B,) at sequence index t -> Code-T hidden (B, 1, d) and code logits (B, K)."""
        abs_t = self.abs_emb[:, t] if isinstance(t, int) else self.abs_emb[0].index_select(0, t.reshape(1))
        h = self.tok_emb(token)[:, None] + self.pos_emb(position)[:, None] + abs_t.reshape(1, 1, -1)
        h_c = self.code_stack(h, t)
        return h_c, self.code_head(h_c)[:, 0]

    def position_step(self, h_c: torch.Tensor, code: torch.Tensor, t) -> torch.Tensor:
        """Code-T hidden (B, 1, d) + the just-sampled code (B,) -> position logits (B, L)."""
        h_p = self.pos_stack(h_c + self.tok_emb(code)[:, None], t)
        return self.pos_head(h_p)[:, 0]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def sequence_loss(code_logits: torch.Tensor, pos_logits: torch.Tensor | None, codes: torch.Tensor,
                  positions: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = CE_code + CE_position (Eq. 14), means over all tokens, in fp32."""
    code_loss = F.cross_entropy(code_logits.flatten(0, 1).float(), codes.flatten())
    logs = {"code_loss": code_loss.detach()}
    loss = code_loss
    if pos_logits is not None:
        pos_loss = F.cross_entropy(pos_logits.flatten(0, 1).float(), positions.flatten())
        loss = loss + pos_loss
        logs["position_loss"] = pos_loss.detach()
    logs["loss"] = loss.detach()
    return loss, logs
