"""The one interface every quantizer implements, and the helpers they share.

A quantizer maps encoder outputs ``z`` of shape ``(B, D, *spatial)`` to a :class:`QuantizerOutput`; in eval
mode ``indices_to_codes(q(z).indices)`` equals ``q(z).quantized`` exactly. While training it also keeps the
statistics that :class:`vqgan.train.diagnostics.CodebookDiagnostics` records (running per-code usage, hits and
restarts since the last record), updated on the device without host synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

# Codes below 1% of a uniform share of the hits are reported dead when a quantizer has no restart threshold.
REPORT_DEAD_THRESHOLD = 0.01


@dataclass
class QuantizerOutput:
    """Result of a quantizer's forward pass: ``quantized`` latents (shape of the input, straight-through
    gradients, Bengio et al. 2013), ``indices`` ``(B, *spatial)`` or ``(B, *spatial, stages)``, the weighted
    scalar ``loss`` to add to the objective, its detached unweighted ``losses`` (``commitment``, ``codebook``,
    ...) and detached batch ``stats`` (``perplexity``, ``usage``: the fraction of codes used)."""

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


def straight_through(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``q`` forward, identity gradient to ``x``: ``q + x - sg[x]`` keeps the forward value exactly ``q``."""
    return q.detach() + (x - x.detach())


def code_histogram(indices: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Hits per code, float ``(codebook_size,)`` (``index_add_``: bincount syncs with the host on CUDA)."""
    flat = indices.reshape(-1)
    ones = torch.ones(flat.shape[0], device=flat.device, dtype=torch.float32)
    return torch.zeros(codebook_size, device=flat.device, dtype=torch.float32).index_add_(0, flat, ones)


def perplexity_and_usage(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """Perplexity ``exp(H(p))`` of the code histogram ``counts`` and the fraction of codes with a hit."""
    counts = counts.float()
    p = counts / counts.sum().clamp_min(1.0)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return {"perplexity": entropy.exp(), "usage": (counts > 0).float().mean()}


def distributed_ready() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over data-parallel ranks in place (no-op on one process), so EMA statistics agree on every rank."""
    if distributed_ready():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Copy rank ``src``'s tensor to every rank in place (no-op on one process)."""
    if distributed_ready():
        dist.broadcast(t, src)
    return t


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate the ``(N_r, D)`` tensors of every rank in rank order; ranks may hold different ``N_r``.
    Through the host, which does not matter: this runs once, for k-means initialisation."""
    if not distributed_ready():
        return t
    rows: list[torch.Tensor | None] = [None] * dist.get_world_size()
    dist.all_gather_object(rows, t.cpu())
    return torch.cat(rows).to(t.device)


class Quantizer(nn.Module):
    """Base class: subclasses implement :meth:`forward`, :meth:`indices_to_codes` and :attr:`codebook`, for
    latents of ``dim`` channels and ``codebook_size`` codes (of one stage, for residual quantizers). Codes
    whose running relative usage (1 = a uniform share) falls below ``dead_code_threshold`` are restarted."""

    learns_codebook_by_gradient: bool = False  # whether codebook_grad() returns the codebook's gradient

    def __init__(self, dim: int, codebook_size: int, usage_decay: float = 0.99, dead_code_threshold: float = 0.0):
        super().__init__()
        self.dim, self.codebook_size = dim, codebook_size
        self.usage_decay, self.dead_code_threshold = usage_decay, dead_code_threshold
        self.register_buffer("usage_ema", torch.zeros(codebook_size))
        # Since the last pop_window(); not saved in checkpoints (diagnostics restart their window on resume).
        self.register_buffer("window_counts", torch.zeros(codebook_size), persistent=False)
        self.register_buffer("window_restarts", torch.zeros(()), persistent=False)

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

    @property
    def diagnostic_target(self) -> Quantizer:
        """The quantizer whose statistics diagnostics report (a residual quantizer's first stage)."""
        return self

    def codebook_grad(self) -> torch.Tensor | None:
        """Gradient of the learned code vectors after backward; ``None`` unless learned by gradients."""
        return None

    def _count_codes(
        self, indices: torch.Tensor, restarted: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """This batch's per-code hits and their :func:`perplexity_and_usage`. While training the hits are
        summed over ranks and update the diagnostics window and the running usage, relative to a uniform share
        (``counts * K / sum(counts)``) so that one threshold means the same for any batch size."""
        counts = code_histogram(indices, self.codebook_size)
        if self.training:
            with torch.no_grad():
                all_reduce_sum(counts)
                relative = counts * (self.codebook_size / counts.sum().clamp_min(1.0))
                self.usage_ema.lerp_(relative, 1.0 - self.usage_decay)
                self.window_counts.add_(counts)
                if restarted is not None:
                    self.window_restarts.add_(restarted.float())
        return counts, perplexity_and_usage(counts)

    @torch.no_grad()
    def pop_window(self) -> dict[str, torch.Tensor]:
        """The :attr:`diagnostic_target`'s hits per code and restarts since the previous call; resets both."""
        q = self.diagnostic_target
        out = {"counts": q.window_counts.clone(), "restarts": q.window_restarts.clone()}
        q.window_counts.zero_()
        q.window_restarts.zero_()
        return out

    def dead_codes(self, threshold: float | None = None) -> torch.Tensor:
        """Mask of the :attr:`diagnostic_target`'s codes whose running relative usage is below ``threshold``
        (default: the restart threshold, or :data:`REPORT_DEAD_THRESHOLD` when restarts are off)."""
        q = self.diagnostic_target
        if threshold is None:
            threshold = q.dead_code_threshold if q.dead_code_threshold > 0 else REPORT_DEAD_THRESHOLD
        return q.usage_ema < threshold
