"""Adversarial losses and taming's adaptive weight, as pure functions.

Fixed relative to the anchors (pinned by ``tests/test_losses.py``): the non-saturating discriminator loss
gives real images the target 1 (LlamaGen swapped the BCE arguments), and the caller computes discriminator
losses on detached reconstructions, so they never reach the generator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """``0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(G(z)))])`` (Lim & Ye 2017; taming's ``hinge_d_loss``),
    reduced in fp32: under bf16 autocast the logits' mean would be bf16 (autocast upcasts the BCE losses)."""
    return 0.5 * (F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean())


def non_saturating_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """``0.5 * (BCE(D(x), 1) + BCE(D(G(z)), 0))`` with logits (Goodfellow et al. 2014)."""
    real = F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
    fake = F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake))
    return 0.5 * (real + fake)


def _check_kind(kind: str) -> None:
    if kind not in ("hinge", "non_saturating"):
        raise ValueError(f"unknown GAN loss {kind!r}; choose hinge or non_saturating")


def generator_adversarial_loss(logits_fake: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """The generator's side: ``-E[D(G(z))]`` for hinge (taming), ``BCE(D(G(z)), 1)`` for non-saturating."""
    _check_kind(kind)
    if kind == "hinge":
        return -logits_fake.float().mean()
    return F.binary_cross_entropy_with_logits(logits_fake, torch.ones_like(logits_fake))


def discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """Discriminator loss of the chosen kind."""
    _check_kind(kind)
    return (hinge_d_loss if kind == "hinge" else non_saturating_d_loss)(logits_real, logits_fake)


def adaptive_weight_from_grads(nll_grads: torch.Tensor, g_grads: torch.Tensor, max_weight: float = 1e4) -> torch.Tensor:
    """``||grad_L(nll)|| / (||grad_L(g)|| + 1e-4)`` from the gradients of the reconstruction and adversarial
    losses at the decoder's last layer ``L`` (Esser et al. 2021, eq. 7), clamped to ``[0, max_weight]``,
    detached."""
    weight = torch.linalg.vector_norm(nll_grads) / (torch.linalg.vector_norm(g_grads) + 1e-4)
    return weight.clamp(0.0, max_weight).detach()


def disc_factor(step: int, start: int, ramp_steps: int = 0, max_factor: float = 1.0) -> float:
    """Weight of the adversarial terms at ``step``: 0 before ``start``, then a linear ramp over ``ramp_steps`` to
    ``max_factor`` (a step function when ``ramp_steps == 0``, as in taming)."""
    if step < start:
        return 0.0
    return max_factor * min(1.0, (step - start + 1) / ramp_steps) if ramp_steps > 0 else max_factor
