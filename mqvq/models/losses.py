"""Stage-1 objective, as VQGAN: L1 + LPIPS perceptual + adaptive-weight hinge GAN + codebook.

    nll  = w_l1 |x - x~|_1 + w_p LPIPS(x, x~)                    (means)
    g    = -mean D(x~)                                             (discriminator params frozen here)
    lam  = clamp(|d nll / d W_last| / (|d g / d W_last| + 1e-4), 0, 1e4) * disc_weight, <= disc_weight_max
    L_G  = nll + [step >= disc_start] lam g + w_cb L_vq
    L_D  = [step >= disc_start] hinge(D(x), D(sg x~))

Before `disc_start` the GAN terms are skipped entirely (not multiplied by zero), which saves the
discriminator forward and both adaptive-weight gradients. After it, LPIPS and D are each walked back
once: their gradients at the reconstruction give both lam's last-layer gradients (through the last
layer alone) and the generator's backward (a surrogate loss), instead of three walks through each.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.func import functional_call

from mqvq.config import LossConfig
from mqvq.models.discriminator import PatchDiscriminator, hinge_d_loss
from mqvq.models.lpips import LPIPS, load_lpips


class Stage1Loss(nn.Module):
    def __init__(self, cfg: LossConfig, lpips: LPIPS | None = None):
        super().__init__()
        self.cfg = cfg
        if cfg.perceptual_weight > 0 and lpips is None:
            lpips = load_lpips("vgg", cfg.lpips_weights or None)
        self.lpips = lpips if cfg.perceptual_weight > 0 else None
        self.disc = PatchDiscriminator(cfg.disc_layers, cfg.disc_channels)

    def gan_active(self, step: int) -> bool:
        return self.cfg.disc_weight > 0 and step >= self.cfg.disc_start

    def generator_loss(
        self, images: torch.Tensor, recon: torch.Tensor, vq_loss: torch.Tensor, last_layer: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.cfg
        l1 = (images - recon).abs().mean()
        nll = c.l1_weight * l1
        logs = {"l1": l1.detach(), "vq": vq_loss.detach()}
        if self.lpips is not None:
            p = self.lpips(images, recon).mean()
            nll = nll + c.perceptual_weight * p
            logs["lpips"] = p.detach()
        loss = nll + c.codebook_weight * vq_loss
        if self.gan_active(step):
            # frozen copy of D's parameters: the generator step must not touch D's gradients
            params = {k: v.detach() for k, v in self.disc.named_parameters()}
            buffers = dict(self.disc.named_buffers())
            g = -functional_call(self.disc, {**params, **buffers}, (recon,)).mean()
            if c.adaptive_weight and recon.requires_grad:
                # nll and g reach the generator only through `recon`: their gradients at `recon` are
                # taken once (LPIPS and D are each walked back once), the adaptive weight's gradients
                # at the last layer come from those through the last layer alone, and the returned
                # loss is a surrogate whose backward gives the generator exactly
                # d(nll + lam g + w_cb L_vq)/d(theta); its value is not the loss (logs["loss"] is)
                (g_nll_r,) = torch.autograd.grad(nll, recon)  # frees LPIPS's graph: it is not walked again
                (g_g_r,) = torch.autograd.grad(g, recon)  # and D's
                g_nll = torch.autograd.grad(recon, last_layer, g_nll_r, retain_graph=True)[0]
                g_g = torch.autograd.grad(recon, last_layer, g_g_r, retain_graph=True)[0]
                lam = self._adaptive_weight(g_nll, g_g)
                value = loss.detach() + lam * g.detach()
                loss = (recon * (g_nll_r + lam * g_g_r)).sum() + c.codebook_weight * vq_loss
                logs.update(g=g.detach(), lam=lam.detach(), loss=value)
                return loss, logs
            lam = torch.tensor(c.disc_weight, device=images.device)
            loss = loss + lam * g
            logs.update(g=g.detach(), lam=lam.detach())
        logs["loss"] = loss.detach()
        return loss, logs

    def _adaptive_weight(self, g_nll: torch.Tensor, g_g: torch.Tensor) -> torch.Tensor:
        """VQGAN's lam = clamp(|dnll/dW| / (|dg/dW| + 1e-4), 0, 1e4) * disc_weight, at most disc_weight_max."""
        c = self.cfg
        lam = (g_nll.norm() / (g_g.norm() + 1e-4)).clamp(0.0, 1e4).detach() * c.disc_weight
        return lam.clamp_max(c.disc_weight_max)

    def discriminator_loss(self, images: torch.Tensor, recon: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Hinge loss on real and detached reconstructed images, reusing the generator step's
        reconstruction (no second MQ-VAE forward). Two D calls as taming, so BatchNorm sees
        real and fake batches separately."""
        real = self.disc(images)
        fake = self.disc(recon.detach())
        loss = hinge_d_loss(real, fake)
        return loss, {"d_loss": loss.detach(), "logits_real": real.detach().mean(), "logits_fake": fake.detach().mean()}
