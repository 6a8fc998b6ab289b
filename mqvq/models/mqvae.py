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
from typing import NamedTuple

import torch
import torch.nn as nn

from mqvq.config import MQVAEConfig, from_dict, num_kept
from mqvq.errors import UserError
from mqvq.models.autoencoder import Decoder, Encoder, MidBlock
from mqvq.models.demask import DeMask
from mqvq.models.masking import (
    AdaptiveMask,
    NoMask,
    RandomMask,
    gather_tokens,
    keep_from_positions,
    layer_norm_tokens,
    positions_from_keep,
    scatter_to_grid,
)
from mqvq.models.quantizer import VectorQuantizer
from mqvq.models.selectors import (
    CentreMask,
    DamageMask,
    EntropyMask,
    OracleForegroundMask,
    StraightThroughMask,
    damage_targets,
    probe_masks,
)


@dataclass
class Encoded:
    codes: torch.Tensor  # (B, N) int64 code indices, raster order
    positions: torch.Tensor  # (B, N) int64 grid positions in [0, L), increasing
    keep: torch.Tensor  # (B, L) bool
    scores: torch.Tensor | None  # (B, L) importance scores (adaptive mask only)
    grid: tuple[int, int]  # (h, w) latent grid


class Quantized(NamedTuple):
    """What the encoder, mask and quantizer make of a batch, before decoding."""

    zq: torch.Tensor  # (B, N, D) the kept tokens' code vectors (straight-through to the encoder)
    encoded: Encoded
    vq_loss: torch.Tensor  # scalar
    counts: torch.Tensor  # (K,) code counts of this batch
    # (B, L, D) every token's code vector as if kept, read before this step's EMA update and dead-code
    # restarts; only when something needs it (the damage selector's targets, the straight-through surrogate)
    every: torch.Tensor | None = None
    relaxed: torch.Tensor | None = None  # (B, L) the straight-through selector's surrogate keep weights

    @property
    def relax(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(surrogate, every) for `_decode_vectors`: the straight-through gradient, or None."""
        return None if self.relaxed is None else (self.relaxed, self.every)


@dataclass
class Stage1Output:
    recon: torch.Tensor  # (B, 3, H, W)
    vq_loss: torch.Tensor  # scalar
    encoded: Encoded
    counts: torch.Tensor  # (K,) code counts of this batch
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
                "straight-through": lambda: StraightThroughMask(
                    cz, mk.ratio, mk.scorer, mk.scorer_hidden, mk.tau_start
                ),
                "entropy": lambda: EntropyMask(mk.ratio),
                "oracle-foreground": lambda: OracleForegroundMask(mk.ratio),
                "centre": lambda: CentreMask(mk.ratio),
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
        self.quantizer = VectorQuantizer(
            q.codebook_size, q.dim, q.beta, q.update, q.decay, q.restart_dead, q.dead_threshold
        )
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

    def _learns_from_damage(self) -> bool:
        return self.training and isinstance(self.mask, DamageMask)

    def _quantize(self, images: torch.Tensor, fg: torch.Tensor | None = None) -> Quantized:
        grid = self._grid(images)
        z = self.encoder(images)
        m = self.mask(z, images=images, fg=fg)
        every = None
        if m.relaxed is not None or self._learns_from_damage():
            with torch.no_grad():  # before the quantizer's call below updates the codebook
                every = self._lookup(layer_norm_tokens(z))
        zq, codes, vq_loss, stats = self.quantizer(self.quant_proj(m.features))
        encoded = Encoded(codes, m.positions, m.keep, m.scores, grid)
        return Quantized(zq, encoded, vq_loss, stats["counts"], every, m.relaxed)

    def _decode_vectors(
        self,
        zq: torch.Tensor,
        positions: torch.Tensor,
        keep: torch.Tensor,
        grid: tuple[int, int],
        relax: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        b, n, d = zq.shape
        h, w = grid
        if self.config.mask.type == "none":
            filled = zq  # every position kept, already in raster order
        else:
            filled = scatter_to_grid(zq, positions, h * w, self.mask_code)
        if relax is not None:  # zero forward; backward, d loss / d m_l = <d loss / d grid_l, VQ(z_l) - e_mask>
            soft, every = relax
            filled = filled + (soft - soft.detach())[..., None] * (every - self.mask_code).detach()
        if filled.device.type not in ("cuda", "cpu") or not torch.is_autocast_enabled(
            filled.device.type
        ):  # fp32 quantizer output into a possibly bf16 model
            filled = filled.to(self.post_quant.weight.dtype)
        z = self.post_quant(filled.transpose(1, 2).reshape(b, d, h, w))
        return self.decoder(z, keep)

    # ------------------------------------------------------------------ public API
    def forward(self, images: torch.Tensor, fg: torch.Tensor | None = None) -> Stage1Output:
        """images (B, 3, H, W) in [-1, 1] -> reconstruction, quantizer loss, codes and positions.
        `fg` (B, H, W): the foreground masks, needed only by the oracle-foreground selector."""
        q = self._quantize(images, fg)
        enc = q.encoded
        recon = self._decode_vectors(q.zq, enc.positions, enc.keep, enc.grid, q.relax)
        out = Stage1Output(recon, q.vq_loss, enc, q.counts)
        if self._learns_from_damage():

            def decode_kept(keep: torch.Tensor) -> torch.Tensor:
                return self._decode_kept(q.every, keep, enc.grid)

            out.selector_loss = self.mask.damage_loss(images, enc.scores, enc.positions.shape[1], enc.grid, decode_kept)
        return out

    @torch.no_grad()
    def probe_damage(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """((B, L) damage, (B, L) valid): what this model's own decoder loses when each token is dropped,
        measured as the damage selector's target is (`damage_targets` under two random probe masks of
        this model's kept count), whatever the selector. A decoder co-trained with a selector learns to
        restore what that selector drops, so this tells whether the model finds the object or the
        background costlier to lose."""
        z = self.encoder(images)
        grid = self._grid(images)
        length = grid[0] * grid[1]
        every = self.code_vectors(z)
        keep_a, keep_b = probe_masks(
            images.shape[0], length, num_kept(length, self.config.mask.ratio), z.device, generator
        )
        return damage_targets(lambda k: self._decode_kept(every, k, grid), images, keep_a, keep_b, grid)

    def code_vectors(self, z: torch.Tensor) -> torch.Tensor:
        """(B, L, D): every token's nearest code vector as if kept (unit gain), codebook untouched."""
        return self._lookup(layer_norm_tokens(z))

    def _decode_kept(self, every: torch.Tensor, keep: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Decode keeping the tokens `keep` (B, L) marks (the same count in every row), each kept token as
        its code vector in `every` (B, L, D) (`code_vectors`)."""
        positions = positions_from_keep(keep)
        return self._decode_vectors(gather_tokens(every, positions), positions, keep, grid)

    def _lookup(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, Cz) unit-gain tokens -> their nearest code vectors (B, N, D), leaving the codebook alone."""
        feats = self.quant_proj(tokens)
        return self.quantizer.codes_to_vectors(self.quantizer.nearest(feats.reshape(-1, feats.shape[-1]))).reshape(
            feats.shape
        )

    @torch.no_grad()
    def encode(self, images: torch.Tensor, fg: torch.Tensor | None = None) -> Encoded:
        """Codes (B, N), positions (B, N) in raster order and the keep mask (B, L)."""
        return self._quantize(images, fg).encoded

    @torch.no_grad()
    def decode(
        self, codes: torch.Tensor, positions: torch.Tensor | None = None, grid: tuple[int, int] | None = None
    ) -> torch.Tensor:
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
        raise ValueError(
            f"no square grid keeps N = {n} tokens at mask ratio {self.config.mask.ratio}; pass grid=(h, w)"
        )

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
