"""One stage-1 step's losses and gradients apart from Lightning, run by the module, benchmarks and tests.

The adaptive GAN weight (Esser et al. 2021, eq. 7) needs the nll and adversarial gradients at the decoder's
last layer; taming back-propagates through LPIPS and the discriminator twice for them. Here each loss goes
back *once*, to the reconstruction cut from the graph (``rec_leaf``); the last-layer gradients follow by one
weight-gradient each, and the autoencoder is back-propagated once with ``dnll/drec + lambda * dg/drec``: the
same gradients (the chain rule, regrouped), half the traversals, and those graphs freed before the
autoencoder's backward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from vqgan.losses import VQGANLoss
from vqgan.losses.gan import adaptive_weight_from_grads, generator_adversarial_loss
from vqgan.losses.vqgan import LossOutput
from vqgan.models.outputs import VQModelOutput

Backward = Callable[..., None]


def generator_forward_backward(
    model: nn.Module, loss_fn: VQGANLoss, discriminator: nn.Module | None, x: torch.Tensor,
    mask: torch.Tensor | None, disc_factor: float, params: list[torch.nn.Parameter],
    backward: Backward = torch.autograd.backward,
) -> tuple[VQModelOutput, LossOutput]:
    """Autoencoder forward pass, generator loss (detached) and its gradients into ``params`` only (with
    ``backward``: ``manual_backward`` in training); no ``discriminator`` or ``disc_factor`` 0: no GAN term."""
    c = loss_fn.cfg
    out = model(x)
    rec = out.reconstruction
    adversarial = discriminator is not None and disc_factor > 0
    if not (adversarial and c.adaptive_weight and torch.is_grad_enabled()):
        logits_fake = discriminator(rec) if adversarial else None
        g = loss_fn.generator_loss(x, rec, out.vq_loss, logits_fake, disc_factor, mask)
        backward(g.loss, inputs=params)
        return out, LossOutput(g.loss.detach(), g.logs)

    # Each loss is back-propagated once, to the reconstruction only (not to the discriminator's weights). The leaf
    # is fp32 even under bf16 autocast, so that both gradients at the reconstruction, and the adaptive weight (a
    # ratio of their norms at the last layer), are fp32; they go back to the autoencoder in its own dtype.
    rec_leaf = rec.detach().float().requires_grad_(True)
    nll = loss_fn.nll(x, rec_leaf, mask)
    (grad_nll,) = torch.autograd.grad(nll.loss, rec_leaf)
    g_adv = generator_adversarial_loss(discriminator(rec_leaf), c.gan_loss)
    (grad_g,) = torch.autograd.grad(g_adv, rec_leaf)
    # Last-layer gradients of each loss, from the gradients at the reconstruction: one weight-gradient each.
    last = model.last_layer
    (w_nll,) = torch.autograd.grad(rec, last, grad_outputs=grad_nll.to(rec.dtype), retain_graph=True)
    (w_g,) = torch.autograd.grad(rec, last, grad_outputs=grad_g.to(rec.dtype), retain_graph=True)
    d_weight = adaptive_weight_from_grads(w_nll, w_g, c.adaptive_weight_max) * c.disc_weight
    scale = d_weight * disc_factor
    # d(total)/d(rec) = dnll/drec + scale * dg/drec; the surrogate's gradient w.r.t. the autoencoder's parameters is
    # exactly that vector-Jacobian product plus the VQ loss's own gradient.
    grad_rec = (grad_nll + scale * grad_g).to(rec.dtype)
    surrogate = (rec * grad_rec).sum() + out.vq_loss
    backward(surrogate, inputs=params)

    total = nll.loss.detach() + out.vq_loss.detach() + scale * g_adv.detach()
    logs = dict(nll.logs)
    logs.update(vq=out.vq_loss.detach(), g_adv=g_adv.detach(), d_weight=d_weight.detach(), total=total)
    return out, LossOutput(total, logs)


def discriminator_forward_backward(
    loss_fn: VQGANLoss, discriminator: nn.Module, x: torch.Tensor, reconstruction: torch.Tensor,
    disc_factor: float, params: list[torch.nn.Parameter], backward: Backward = torch.autograd.backward,
) -> LossOutput:
    """Discriminator loss on real images and detached reconstructions, its gradients into ``params``; real and
    fake go through separately (as in taming), so that BatchNorm sees each batch's own statistics."""
    logits_real = discriminator(x.detach())
    logits_fake = discriminator(reconstruction.detach())
    d = loss_fn.discriminator_loss(logits_real, logits_fake, disc_factor)
    backward(d.loss, inputs=params)
    return d


@dataclass
class StepGradients:
    """One step's model output, losses (``d``: ``None`` without a discriminator step), gradient norms."""

    out: VQModelOutput
    g: LossOutput
    d: LossOutput | None
    g_norm: torch.Tensor
    d_norm: torch.Tensor
