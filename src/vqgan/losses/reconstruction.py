"""Pixel reconstruction losses: L1, L2 and the masked L2 of seed 004 (per-pixel weights)."""

from __future__ import annotations

import torch


def threshold_mask(
    target: torch.Tensor, threshold: float, foreground: float = 1.0, background: float = 0.1
) -> torch.Tensor:
    """Per-pixel weights ``(B, 1, *spatial)``: ``foreground`` where any channel of the target (in [-1, 1])
    exceeds ``threshold``, ``background`` elsewhere."""
    fg = (target > threshold).any(dim=1, keepdim=True)
    return torch.where(fg, target.new_tensor(foreground), target.new_tensor(background))


def reconstruction_loss(
    inputs: torch.Tensor, reconstruction: torch.Tensor, kind: str = "l1", weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean reconstruction error of ``kind`` ``l1``, ``l2`` or ``masked_l2``. ``masked_l2`` needs per-pixel
    ``weights`` broadcastable to the inputs and is ``sum(w * err) / sum(w)``, so its scale does not depend on
    the mask's area."""
    diff = reconstruction - inputs
    if kind == "l1":
        return diff.abs().mean()
    if kind == "l2":
        return diff.pow(2).mean()
    if kind != "masked_l2":
        raise ValueError(f"unknown reconstruction loss {kind!r}; choose l1, l2 or masked_l2")
    if weights is None:
        raise ValueError("masked_l2 needs per-pixel weights (a mask from the dataset or a threshold)")
    w = weights.to(diff.dtype).expand_as(diff)
    return (w * diff.pow(2)).sum() / w.sum().clamp_min(1e-8)
