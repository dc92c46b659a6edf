"""Typed outputs of the models (named fields instead of positional tuples)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class EncodeOutput:
    """Result of :meth:`VQModel.encode`.

    Attributes:
        latents: encoder output after ``quant_conv``, ``(B, embed_dim, h, w)``, before quantization.
        quantized: quantized latents, same shape.
        indices: code indices, ``(B, h, w)`` (``(B, h, w, stages)`` for residual quantizers).
    """

    latents: torch.Tensor
    quantized: torch.Tensor
    indices: torch.Tensor


@dataclass
class VQModelOutput:
    """Result of :meth:`VQModel.forward`.

    Attributes:
        reconstruction: decoded image in [-1, 1] (not clamped), shape of the input.
        quantized, indices, latents: as in :class:`EncodeOutput`.
        vq_loss: the quantizer's weighted loss (commitment, codebook, entropy), a scalar.
        vq_losses: its unweighted components, detached.
        stats: quantizer batch statistics (perplexity, usage, restarts), detached.
    """

    reconstruction: torch.Tensor
    quantized: torch.Tensor
    indices: torch.Tensor
    latents: torch.Tensor
    vq_loss: torch.Tensor
    vq_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
