"""The stage-1 objective of Esser et al. 2021 (taming's ``VQLPIPSWithDiscriminator``), as a small module whose
methods are pure: tensors and weights in, a loss and a dict of detached logs out. It holds only the frozen
perceptual network; the step, the discriminator and the optimizers stay with the caller."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vqgan.config import LossConfig
from vqgan.losses.gan import discriminator_loss, generator_adversarial_loss
from vqgan.losses.perceptual import build_perceptual
from vqgan.losses.reconstruction import reconstruction_loss, threshold_mask


@dataclass
class LossOutput:
    """A loss to back-propagate and its detached components for logging."""

    loss: torch.Tensor
    logs: dict[str, torch.Tensor]


class VQGANLoss(nn.Module):
    """Reconstruction + perceptual + VQ + adaptive-weighted adversarial loss for the generator, and the GAN loss
    for the discriminator."""

    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.cfg = cfg
        self.perceptual = build_perceptual(cfg.perceptual, cfg.lpips_net, cfg.backbone_weights, cfg.random_backbone)

    def pixel_weights(self, inputs: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
        """Per-pixel weights for ``masked_l2``: the dataset's mask, or a threshold on the target."""
        c = self.cfg
        if c.reconstruction != "masked_l2":
            return None
        if mask is not None:
            m = mask.to(inputs.dtype)
            return c.mask_background_weight + (c.mask_foreground_weight - c.mask_background_weight) * m
        if c.mask_threshold is None:
            raise ValueError("masked_l2 needs a mask from the dataset or loss.mask_threshold")
        return threshold_mask(inputs, c.mask_threshold, c.mask_foreground_weight, c.mask_background_weight)

    def nll(self, inputs: torch.Tensor, reconstruction: torch.Tensor, mask: torch.Tensor | None = None) -> LossOutput:
        """Weighted reconstruction + perceptual loss (the "nll" of taming)."""
        c = self.cfg
        rec = reconstruction_loss(inputs, reconstruction, c.reconstruction, self.pixel_weights(inputs, mask))
        loss = c.reconstruction_weight * rec
        logs = {"rec": rec.detach()}
        if self.perceptual is not None and c.perceptual_weight > 0:
            x, y = inputs, reconstruction
            if x.dim() == 5:  # video (B, C, T, H, W): perceptual loss per frame
                x, y = (t.transpose(1, 2).flatten(0, 1) for t in (x, y))
            # Averaged in fp32: under bf16 autocast the per-image distances come out in bf16.
            p = self.perceptual(x.contiguous(), y.contiguous()).float().mean()
            loss = loss + c.perceptual_weight * p
            logs["perceptual"] = p.detach()
        logs["nll"] = loss.detach()
        return LossOutput(loss, logs)

    def generator_loss(
        self, inputs: torch.Tensor, reconstruction: torch.Tensor, vq_loss: torch.Tensor,
        logits_fake: torch.Tensor | None, disc_factor: float, mask: torch.Tensor | None = None,
    ) -> LossOutput:
        """Total generator loss. ``logits_fake``: the discriminator's on the (non-detached) reconstruction,
        or ``None`` when the adversarial term is off; ``disc_factor``: 0 before ``disc_start``, then ramps."""
        nll = self.nll(inputs, reconstruction, mask)
        loss = nll.loss + vq_loss
        logs = {**nll.logs, "vq": vq_loss.detach()}
        if logits_fake is not None and disc_factor > 0:
            g = generator_adversarial_loss(logits_fake, self.cfg.gan_loss)
            # ``disc_weight`` as is: the adaptive weight needs gradients, which train/step.py computes.
            d_weight = torch.tensor(self.cfg.disc_weight, device=g.device)
            loss = loss + d_weight * disc_factor * g
            logs.update(g_adv=g.detach(), d_weight=d_weight)
        logs["total"] = loss.detach()
        return LossOutput(loss, logs)

    def discriminator_loss(self, logits_real: torch.Tensor, logits_fake: torch.Tensor, disc_factor: float) -> LossOutput:
        """Discriminator loss on real images and *detached* reconstructions, scaled by ``disc_factor``."""
        d = discriminator_loss(logits_real, logits_fake, self.cfg.gan_loss)
        logs = {"d_loss": d.detach(), "logits_real": logits_real.detach().mean()}
        logs["logits_fake"] = logits_fake.detach().mean()
        return LossOutput(disc_factor * d, logs)
