"""Stackformer (paper §3.3, Eq. 9-14) and the raster baseline, one class.

Token layout (vocabulary K + 1 + C + V): codes 0..K-1, <sos> = K, class c = K + 1 + c, text
token v = K + 1 + C + v (V = the caption vocabulary, 0 when not text-conditional).
Position layout (L + 1): grid positions 0..L-1, <sos> = L.

The condition is a prefix of S tokens, each at position <sos> (§3.3): S = 1 for <sos> or the
class token, S = T for a caption's T text tokens (padded). Dropping the condition (classifier-free
guidance) replaces it with the same length of <sos> (class) or padding (text). For a
raster-ordered sequence (M_1..M_N, P_1..P_N) with prefix M_{1-S}..M_0:

    U_c = e_c(M_{1-S}..M_{N-1}) + e_p(<sos>.., P_1..P_{N-1}) + abs(0..S+N-2)   Eq. 10 (+ learned absolute position)
    H_c = CodeTransformer(U_c)[S-1:]  ->  p(M_t | M_<t, P_<t) = head_c(H_c[t-1])   Eq. 11
    U_p = H_c + e_c(M_1..M_N)       (the *current* code)                            Eq. 12
    H_p = PositionTransformer(U_p)  ->  p(P_t | M_<=t, P_<t)  = head_p(H_p[t-1])       Eq. 13
    L   = CE_code + CE_position over the N image tokens (the prefix is never a target)  Eq. 14

Only the last prefix state enters the Position-Transformer; it sees the caption through H_c.
With S = 1 this is exactly the unconditional / class-conditional model.

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
    length: int  # N tokens per image (L for the raster baseline)
    num_classes: int = 0
    text_vocab: int = 0  # V caption token ids (0: not text-conditional)
    text_length: int = 0  # T caption tokens in the prefix

    @property
    def grid_len(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def prefix_len(self) -> int:
        return self.text_length if self.text_vocab else 1


class Stackformer(nn.Module):
    def __init__(self, cfg: StackformerConfig, shape: TokenShape):
        super().__init__()
        self.cfg, self.shape = cfg, shape
        k, grid_len, n, d = shape.codebook_size, shape.grid_len, shape.length, cfg.width
        self.raster = cfg.kind == "raster"
        self.sos, self.sos_pos = k, grid_len
        self.text_offset = k + 1 + shape.num_classes
        self.prefix_len = shape.prefix_len
        self.seq_len = self.prefix_len + n - 1  # Code-T's input length
        self.tok_emb = nn.Embedding(self.text_offset + shape.text_vocab, d)  # e_c, shared by both stacks (as released)
        self.pos_emb = nn.Embedding(grid_len + 1, d)  # e_p: grid position of each token
        self.abs_emb = nn.Parameter(
            torch.zeros(1, self.seq_len, d)
        )  # learned absolute sequence position (zero init, as released)
        self.drop = nn.Dropout(cfg.dropout)
        code_layers = cfg.code_layers + (cfg.position_layers if self.raster else 0)
        self.code_stack = Stack(code_layers, d, cfg.heads, cfg.dropout)
        self.code_head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, k, bias=False))
        if not self.raster:
            self.pos_stack = Stack(cfg.position_layers, d, cfg.heads, cfg.dropout)
            self.pos_head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, grid_len, bias=False))
        self.apply(init_weights)

    # ------------------------------------------------------------------ helpers
    @property
    def conditional(self) -> bool:
        return bool(self.shape.num_classes or self.shape.text_vocab)

    def prefix(
        self, cond: torch.Tensor | None, batch: int, device: torch.device, drop: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The condition as prefix tokens (B, S): class labels (B,) or caption ids (B, T); rows where
        `drop` is True get the unconditional prefix instead."""
        if not self.conditional:
            return torch.full((batch, 1), self.sos, dtype=torch.long, device=device)
        if cond is None:
            raise ValueError(
                "a conditional Stackformer needs " + ("class labels" if self.shape.num_classes else "caption ids")
            )
        cond = cond.to(device)
        out = cond[:, None] + self.sos + 1 if self.shape.num_classes else cond + self.text_offset
        if drop is not None:
            out = torch.where(drop.to(device)[:, None], self.null_prefix(batch, device), out)
        return out

    def null_prefix(self, batch: int, device: torch.device) -> torch.Tensor:
        """The dropped condition: <sos> for class models, all padding (id 0) for text models."""
        token = self.text_offset if self.shape.text_vocab else self.sos
        return torch.full((batch, self.prefix_len), token, dtype=torch.long, device=device)

    def raster_positions(self, batch: int, length: int, device: torch.device) -> torch.Tensor:
        return torch.arange(length, device=device).expand(batch, -1)

    # ------------------------------------------------------------------ teacher forcing
    def forward(
        self,
        codes: torch.Tensor,
        positions: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
    ):
        """codes, positions (B, N) raster order, the condition (class labels (B,) or caption ids (B, T)),
        rows whose condition is dropped -> code logits (B, N, K), position logits (B, N, L) or None."""
        h_c = self.code_hidden(codes, positions, self.prefix(cond, codes.shape[0], codes.device, drop))
        code_logits = self.code_head(h_c)
        if self.raster:
            return code_logits, None
        return code_logits, self.position_logits(h_c, codes)

    def code_hidden(self, codes: torch.Tensor, positions: torch.Tensor | None, prefix: torch.Tensor) -> torch.Tensor:
        """Code-T over the shifted inputs (prefix, M_1..M_{N-1}): the states that predict M_1..M_N,
        (B, N, d); the last code is never read."""
        b, n = codes.shape
        s = prefix.shape[1]
        if self.raster or positions is None:
            positions = self.raster_positions(b, n, codes.device)
        v_in = torch.cat([prefix, codes[:, :-1]], 1)
        p_in = torch.cat(
            [torch.full((b, s), self.sos_pos, device=codes.device, dtype=torch.long), positions[:, :-1]], 1
        )
        h = self.code_stack(self.drop(self.tok_emb(v_in) + self.pos_emb(p_in) + self.abs_emb[:, : s + n - 1]))
        return h[:, s - 1 :]

    def position_logits(self, h_c: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Position-T over Code-T's hidden states plus each step's own code: (B, N, L)."""
        return self.pos_head(self.pos_stack(h_c + self.tok_emb(codes)))

    def loss(self, codes: torch.Tensor, positions: torch.Tensor | None, cond: torch.Tensor | None = None):
        return sequence_loss(*self(codes, positions, cond), codes, positions)

    # ------------------------------------------------------------------ cached decoding
    def setup_cache(self, batch: int, dtype: torch.dtype, device: torch.device) -> None:
        self.code_stack.setup_cache(batch, self.seq_len, dtype, device)
        if not self.raster:
            self.pos_stack.setup_cache(batch, self.shape.length, dtype, device)

    def clear_cache(self) -> None:
        self.code_stack.clear_cache()
        if not self.raster:
            self.pos_stack.clear_cache()

    def prefill(self, tokens: torch.Tensor) -> None:
        """Write all but the last prefix token (B, S-1) into Code-T's cache, at indices 0..S-2."""
        pos = torch.full_like(tokens, self.sos_pos)
        self.code_stack(self.tok_emb(tokens) + self.pos_emb(pos) + self.abs_emb[:, : tokens.shape[1]], 0)

    def code_step(self, token: torch.Tensor, position: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Input token/position (B,) at Code-T index t (S - 1 + the image step) -> Code-T hidden
        (B, 1, d) and code logits (B, K)."""
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


def sequence_loss(
    code_logits: torch.Tensor, pos_logits: torch.Tensor | None, codes: torch.Tensor, positions: torch.Tensor | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
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
