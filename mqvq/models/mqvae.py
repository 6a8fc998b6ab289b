"""MQ-VAE (paper §3.2): VQGAN encoder -> mask -> quantize -> fill grid with the mask code ->
de-mask -> VQGAN decoder. Every Table 6/7 variant is a config value of this one model:

    VQGAN            mask none,            demask none  (decoder mid block)
    VQGAN*           mask none,            demask sa    (same SA + ResNet blocks as the de-mask module)
    MQ-VAE w/o de-mask    mask adaptive,   demask none
    MQ-VAE w/ SA / DC-SA / DC-SA + update  demask sa / dcsa / dcsa-update (the paper's model)
    random-mask ablation  mask random

    z = Encoder(x)                     (B, Cz, h, w), L = h * w
    kept, P, keep = Mask(z)            (B, N, Cz), (B, N), (B, L);  N = (1 - ratio) L
    zq, M = Quantize(Linear(kept))     (B, N, D), (B, N) codes         [fp32]
    grid = scatter(zq, P) else mask code e_mask
    x~ = Decoder(conv1x1(grid), keep)  the decoder's head is the de-mask module
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from mqvq.config import MQVAEConfig, from_dict, num_kept
from mqvq.errors import UserError
from mqvq.models.autoencoder import Decoder, Encoder, MidBlock
from mqvq.models.demask import DeMask
from mqvq.models.masking import (
    AdaptiveMask, NoMask, RandomMask, gather_tokens, keep_from_positions, layer_norm_tokens, positions_from_keep,
    scatter_to_grid, select_top,
)
from mqvq.models.quantizer import VectorQuantizer
from mqvq.models.selectors import (
    DamageMask, EntropyMask, OracleForegroundMask, StraightThroughMask, damage_targets, ranking_loss,
)


@dataclass
class Encoded:
    codes: torch.Tensor      # (B, N) int64 code indices, raster order
    positions: torch.Tensor  # (B, N) int64 grid positions in [0, L), increasing
    keep: torch.Tensor       # (B, L) bool
    scores: torch.Tensor | None  # (B, L) importance scores (adaptive mask only)
    grid: tuple[int, int]    # (h, w) latent grid


@dataclass
class Stage1Output:
    recon: torch.Tensor      # (B, 3, H, W)
    vq_loss: torch.Tensor    # scalar
    encoded: Encoded
    counts: torch.Tensor     # (K,) code counts of this batch
    selector_loss: torch.Tensor | None = None  # scalar: the damage selector's ranking loss (training only)


class MQVAE(nn.Module):
    def __init__(self, config: MQVAEConfig):
        super().__init__()
        self.config = c = config
        mult, cz = c.levels, c.z_channels
        self.encoder = Encoder(c.channels, mult, c.num_res_blocks, cz, c.attention, c.dropout)
        mk = c.mask
        if mk.type == "adaptive":
            self.mask = {
                "gain": lambda: AdaptiveMask(cz, mk.ratio, mk.scorer, mk.scorer_hidden),
                "damage": lambda: DamageMask(cz, mk.ratio, mk.scorer, mk.scorer_hidden, mk.damage_random_share),
                "straight-through": lambda: StraightThroughMask(cz, mk.ratio, mk.scorer, mk.scorer_hidden, mk.tau_start),
                "entropy": lambda: EntropyMask(mk.ratio),
                "oracle-foreground": lambda: OracleForegroundMask(mk.ratio),
            }[mk.selector]()
        elif c.mask.type == "random":
            self.mask = RandomMask(c.mask.ratio)
        else:
            self.mask = NoMask()
        q = c.quantizer
        width = c.channels * mult[-1]
        # released: bias-free pre-projection, post-projection straight to the decoder width (its conv_in
        # then runs width -> width); taming: quant_conv with bias, post_quant_conv back to z_channels
        taming = c.projection == "taming"
        self.quant_proj = nn.Linear(cz, q.dim, bias=taming)  # applied per kept token
        self.quantizer = VectorQuantizer(q.codebook_size, q.dim, q.beta, q.update, q.decay, q.restart_dead, q.dead_threshold)
        if c.mask.type != "none":  # uniformly initialised learnable mask code (paper §3.2)
            self.mask_code = nn.Parameter(torch.empty(q.dim).uniform_(-1.0 / q.dim, 1.0 / q.dim))
        post = cz if taming else width
        self.post_quant = nn.Conv2d(q.dim, post, 1)
        if c.demask.type == "none":
            head = MidBlock(width, c.attention, c.dropout)
        else:
            head = DeMask(width, c.demask.layers, c.demask.type, c.demask.mask_init, c.demask.renormalize, c.dropout)
        self.decoder = Decoder(c.channels, mult, c.num_res_blocks, post, head, c.attention, c.dropout)

    # ------------------------------------------------------------------ pieces
    def _grid(self, images: torch.Tensor) -> tuple[int, int]:
        f = self.config.downsample
        h, w = images.shape[-2:]
        if h % f or w % f:
            raise UserError(f"image size {h}x{w} is not divisible by the downsampling factor f = {f}.")
        return h // f, w // f

    def _quantize(self, images: torch.Tensor, fg: torch.Tensor | None = None):
        grid = self._grid(images)
        z = self.encoder(images)
        m = self.mask(z, images=images, fg=fg)
        zq, codes, vq_loss, stats = self.quantizer(self.quant_proj(m.features))
        relax = None
        if m.relaxed is not None:  # straight-through: what each token would be if kept, for the surrogate's gradient
            with torch.no_grad():
                relax = (m.relaxed, self._lookup(layer_norm_tokens(z)))
        return zq, Encoded(codes, m.positions, m.keep, m.scores, grid), vq_loss, stats["counts"], (z, relax)

    def _decode_vectors(self, zq: torch.Tensor, positions: torch.Tensor, keep: torch.Tensor, grid: tuple[int, int],
                        relax: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        b, n, d = zq.shape
        h, w = grid
        if self.config.mask.type == "none":
            filled = zq  # every position kept, already in raster order
        else:
            filled = scatter_to_grid(zq, positions, h * w, self.mask_code)
        if relax is not None:  # zero forward; backward, d loss / d m_l = <d loss / d grid_l, VQ(z_l) - e_mask>
            soft, every = relax
            filled = filled + (soft - soft.detach())[..., None] * (every - self.mask_code).detach()
        if filled.device.type not in ("cuda", "cpu") or not torch.is_autocast_enabled(filled.device.type):  # fp32 quantizer output into a possibly bf16 model
            filled = filled.to(self.post_quant.weight.dtype)
        z = self.post_quant(filled.transpose(1, 2).reshape(b, d, h, w))
        return self.decoder(z, keep)

    # ------------------------------------------------------------------ public API
    def forward(self, images: torch.Tensor, fg: torch.Tensor | None = None) -> Stage1Output:
        """images (B, 3, H, W) in [-1, 1] -> reconstruction, quantizer loss, codes and positions.
        `fg` (B, H, W): the foreground masks, needed only by the oracle-foreground selector."""
        zq, enc, vq_loss, counts, (z, relax) = self._quantize(images, fg)
        recon = self._decode_vectors(zq, enc.positions, enc.keep, enc.grid, relax)
        out = Stage1Output(recon, vq_loss, enc, counts)
        if self.training and getattr(self.mask, "learns_from_damage", False):
            out.selector_loss = self._damage_loss(images, z, enc)
        return out

    def _damage_loss(self, images: torch.Tensor, z: torch.Tensor, enc: Encoded) -> torch.Tensor:
        """The damage selector's ranking loss against `damage_targets` under a fresh random mask
        (decoded without gradient and without a codebook update)."""
        b, length = enc.keep.shape
        with torch.no_grad():
            keep = select_top(torch.rand(b, length, device=z.device), enc.positions.shape[1])[1]
            damage = damage_targets(lambda k: self._decode_kept(z, k, enc.grid), images, keep, enc.grid)
        return ranking_loss(enc.scores.float(), damage, torch.ones_like(keep))

    def _decode_kept(self, z: torch.Tensor, keep: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Decode the encoder features `z` keeping the tokens `keep` (B, L) marks (the same count in every
        row), with unit-gain features and a nearest-code lookup that leaves the codebook alone."""
        positions = positions_from_keep(keep)
        return self._decode_vectors(self._lookup(gather_tokens(layer_norm_tokens(z), positions)), positions, keep, grid)

    def _lookup(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, Cz) unit-gain tokens -> their nearest code vectors (B, N, D), leaving the codebook alone."""
        feats = self.quant_proj(tokens)
        return self.quantizer.codes_to_vectors(self.quantizer.nearest(feats.reshape(-1, feats.shape[-1]))).reshape(feats.shape)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, fg: torch.Tensor | None = None) -> Encoded:
        """Codes (B, N), positions (B, N) in raster order and the keep mask (B, L)."""
        return self._quantize(images, fg)[1]

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, positions: torch.Tensor | None = None,
               grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) from codes (B, N) at positions (B, N); masked positions get the mask code.

        `grid` (h, w) defaults to the square grid whose kept count under this model's mask ratio is N;
        `positions` may be omitted when every position is kept (raster order)."""
        b, n = codes.shape
        h, w = grid or (self.square_side(n),) * 2
        if positions is None:
            if n != h * w:
                raise ValueError(f"positions are required when N = {n} < L = {h * w}")
            positions = torch.arange(h * w, device=codes.device).expand(b, -1)
        keep = keep_from_positions(positions, h * w)
        return self._decode_vectors(self.quantizer.codes_to_vectors(codes), positions, keep, (h, w))

    def square_side(self, n: int) -> int:
        """Side of the square latent grid that keeps N tokens under this model's mask ratio."""
        for side in range(1, 1025):
            if num_kept(side * side, self.config.mask.ratio) == n:
                return side
        raise ValueError(f"no square grid keeps N = {n} tokens at mask ratio {self.config.mask.ratio}; pass grid=(h, w)")

    def last_layer(self) -> torch.Tensor:
        """Weight the adaptive GAN weight differentiates against (VQGAN: decoder conv_out)."""
        return self.decoder.conv_out.weight

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> MQVAE:
        from mqvq.models.checkpoint import read_checkpoint

        ckpt = read_checkpoint(path)
        saved = dict(ckpt["config"]["stage1"]["model"])
        saved.setdefault("projection", "taming")  # checkpoints from before the field existed used that layout
        cfg = from_dict(MQVAEConfig, saved, "stage1.model.")
        model = cls(cfg)
        model.load_state_dict(ckpt["model"])
        return model.to(map_location).eval()
