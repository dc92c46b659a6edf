"""The one interface every quantizer implements, and the helpers they share.

A quantizer takes encoder outputs ``z`` of shape ``(B, D, *spatial)`` (images: ``(B, D, H, W)``, videos:
``(B, D, T, H, W)``) and returns a :class:`QuantizerOutput`: straight-through quantized latents of the same shape,
integer code indices of shape ``(B, *spatial)`` (``(B, *spatial, S)`` for ``S`` residual stages), the loss to add
to the objective with its breakdown, and batch statistics. ``indices_to_codes`` inverts the lookup.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class QuantizerOutput:
    """Result of a quantizer's forward pass.

    Attributes:
        quantized: quantized latents, shape of the input; gradients flow to the input by the straight-through
            estimator (Bengio et al. 2013).
        indices: code indices, ``(B, *spatial)`` or ``(B, *spatial, stages)``.
        loss: scalar loss to add to the training objective (already weighted).
        losses: unweighted (detached) components for logging, e.g. ``commitment``, ``codebook``, ``entropy``.
        stats: detached batch statistics, e.g. ``perplexity`` and ``usage`` (fraction of codes used).
    """

    quantized: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


def flatten_latents(z: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``(B, D, *spatial) -> (N, D)`` and the ``(B, *spatial)`` shape to restore indices."""
    zt = z.movedim(1, -1)
    return zt.reshape(-1, zt.shape[-1]), tuple(zt.shape[:-1])


def unflatten_latents(flat: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`flatten_latents`: ``(N, D) -> (B, D, *spatial)``."""
    return flat.reshape(*shape, flat.shape[-1]).movedim(-1, 1)


def perplexity_and_usage(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """Perplexity ``exp(H(p))`` of the code histogram ``counts`` and the fraction of codes with a hit."""
    counts = counts.float()
    p = counts / counts.sum().clamp_min(1.0)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return {"perplexity": entropy.exp(), "usage": (counts > 0).float().mean()}


def distributed_ready() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over data-parallel ranks (no-op on one process). Keeps EMA statistics identical on every rank."""
    if distributed_ready():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Copy rank ``src``'s tensor to every rank (no-op on one process)."""
    if distributed_ready():
        dist.broadcast(t, src)
    return t


class Quantizer(nn.Module):
    """Base class: subclasses implement :meth:`forward`, :meth:`indices_to_codes` and :attr:`codebook`.

    It also keeps a running (EMA) per-code usage count, used to find dead codes and reported by diagnostics.
    """

    codebook_size: int
    dim: int

    def __init__(self, dim: int, codebook_size: int, usage_decay: float = 0.99):
        super().__init__()
        self.dim = dim
        self.codebook_size = codebook_size
        self.usage_decay = usage_decay
        self.register_buffer("usage_ema", torch.zeros(codebook_size))

    def forward(self, z: torch.Tensor) -> QuantizerOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Code vectors for ``indices`` of shape ``(B, *spatial)``, returned as ``(B, D, *spatial)``."""
        raise NotImplementedError

    @property
    def codebook(self) -> torch.Tensor:  # pragma: no cover - abstract
        """The ``(codebook_size, D)`` code vectors in the latent space the decoder reads."""
        raise NotImplementedError

    @property
    def num_stages(self) -> int:
        return 1

    @torch.no_grad()
    def _track_usage(self, counts: torch.Tensor) -> None:
        """Update the running usage from this step's per-code ``counts`` (already summed over ranks)."""
        self.usage_ema.lerp_(counts.float(), 1.0 - self.usage_decay)

    def dead_codes(self, threshold: float) -> torch.Tensor:
        """Boolean mask of codes whose running usage is below ``threshold`` hits per step."""
        return self.usage_ema < threshold
