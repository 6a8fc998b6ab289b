"""VQGAN convolutional encoder and decoder (taming layout), any f = 2^levels.

Attention sits at the latent resolution (taming's attn_resolutions = [H/f]). The decoder's
middle is a pluggable `head`: VQGAN's mid block (ResNet, attention, ResNet) or the MQ-VAE
de-mask module, which the released code puts exactly there (decoder conv_in, then de-masker).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mqvq.models.layers import AttnBlock, Downsample, Normalize, ResnetBlock, Upsample


class Encoder(nn.Module):
    def __init__(
        self,
        channels: int,
        mult: tuple[int, ...],
        num_res_blocks: int,
        z_channels: int,
        attention: bool = True,
        dropout: float = 0.0,
        in_channels: int = 3,
    ):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        blocks: list[nn.Module] = []
        cin = channels
        for i, m in enumerate(mult):
            cout = channels * m
            latent_level = i == len(mult) - 1
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(cin, cout, dropout))
                cin = cout
                if attention and latent_level:
                    blocks.append(AttnBlock(cin))
            if not latent_level:
                blocks.append(Downsample(cin))
        self.down = nn.Sequential(*blocks)
        self.mid = nn.Sequential(
            ResnetBlock(cin, cin, dropout),
            AttnBlock(cin) if attention else nn.Identity(),
            ResnetBlock(cin, cin, dropout),
        )
        self.norm_out = Normalize(cin)
        self.conv_out = nn.Conv2d(cin, z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.down(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))


class MidBlock(nn.Module):
    """VQGAN's decoder middle: ResNet, attention, ResNet. Ignores the keep mask."""

    def __init__(self, channels: int, attention: bool = True, dropout: float = 0.0):
        super().__init__()
        self.block1 = ResnetBlock(channels, channels, dropout)
        self.attn = AttnBlock(channels) if attention else None
        self.block2 = ResnetBlock(channels, channels, dropout)

    def forward(self, h: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        h = self.block1(h)
        if self.attn is not None:
            h = self.attn(h)
        return self.block2(h)


class Decoder(nn.Module):
    def __init__(
        self,
        channels: int,
        mult: tuple[int, ...],
        num_res_blocks: int,
        z_channels: int,
        head: nn.Module,
        attention: bool = True,
        dropout: float = 0.0,
        out_channels: int = 3,
    ):
        super().__init__()
        cin = channels * mult[-1]
        self.conv_in = nn.Conv2d(z_channels, cin, 3, padding=1)
        self.head = head
        blocks: list[nn.Module] = []
        for i, m in reversed(list(enumerate(mult))):
            cout = channels * m
            latent_level = i == len(mult) - 1
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(cin, cout, dropout))
                cin = cout
                if attention and latent_level:
                    blocks.append(AttnBlock(cin))
            if i != 0:
                blocks.append(Upsample(cin))
        self.up = nn.Sequential(*blocks)
        self.norm_out = Normalize(cin)
        self.conv_out = nn.Conv2d(cin, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        h = self.head(self.conv_in(z), keep)
        return self.conv_out(F.silu(self.norm_out(self.up(h))))
