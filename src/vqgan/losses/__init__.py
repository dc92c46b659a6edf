"""Loss functions: reconstruction, perceptual, adversarial, and their VQGAN combination."""

from vqgan.losses.gan import (
    adaptive_weight_from_grads,
    disc_factor,
    discriminator_loss,
    generator_adversarial_loss,
    hinge_d_loss,
    non_saturating_d_loss,
)
from vqgan.losses.perceptual import LPIPS, BackboneWeightsMissing, VGGFeatureLoss, build_perceptual
from vqgan.losses.reconstruction import reconstruction_loss, threshold_mask
from vqgan.losses.vqgan import LossOutput, VQGANLoss

__all__ = [
    "LPIPS", "BackboneWeightsMissing", "LossOutput", "VGGFeatureLoss", "VQGANLoss",
    "adaptive_weight_from_grads", "build_perceptual", "disc_factor", "discriminator_loss",
    "generator_adversarial_loss", "hinge_d_loss", "non_saturating_d_loss", "reconstruction_loss",
    "threshold_mask",
]
