"""The per-image reconstruction distances, one definition for validation during training and for
`mqvq eval` (the reports read eval's): PSNR on the 8-bit pixels a saved image has, and LPIPS with
images under 64 px upsampled to 64 (LPIPS-AlexNet's stride-4 stem and three pools need ~32 px)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mqvq.images import to_uint8

LPIPS_MIN_SIDE = 64


def psnr(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """(B,) PSNR in dB of `recon` against `x` (both in [-1, 1]), on their 8-bit pixels."""
    mse = (to_uint8(x).float() - to_uint8(recon).float()).pow(2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(255.0**2 / mse.clamp_min(1e-10))


def lpips_inputs(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`x`, `y` as LPIPS reads them: upsampled (bilinear) to 64 px when smaller."""
    if min(x.shape[-2:]) >= LPIPS_MIN_SIDE:
        return x, y
    size = (LPIPS_MIN_SIDE, LPIPS_MIN_SIDE)
    return tuple(F.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in (x, y))


def lpips_distance(lpips, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """(B,) LPIPS between `x` and `recon` under the rule above."""
    return lpips(*lpips_inputs(x, recon)).flatten()
