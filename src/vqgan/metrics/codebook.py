"""Codebook statistics over a whole evaluation set: usage (fraction of codes hit), perplexity, entropy."""

from __future__ import annotations

import math

import torch
from torchmetrics import Metric


class CodebookUsage(Metric):
    """Accumulates a histogram of code indices (synchronised across processes by torchmetrics).

    ``compute()`` returns ``usage`` (fraction of codes used at least once), ``perplexity`` (``exp`` of the
    entropy of the histogram, in codes), ``entropy`` (bits) and ``used`` (number of codes).

    Args:
        codebook_size: number of codes (of one stage for residual quantizers).
        num_stages: for residual quantizers, whose indices have a last axis of stages: the statistics are those
            of the first stage (the one whose codebook diagnostics also report).
    """

    full_state_update = False

    def __init__(self, codebook_size: int, num_stages: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.codebook_size = codebook_size
        self.num_stages = num_stages
        self.add_state("counts", default=torch.zeros(codebook_size, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, indices: torch.Tensor) -> None:
        if self.num_stages > 1:
            indices = indices[..., 0]
        # scatter_add_ rather than bincount: bincount reads the largest index back to the host on CUDA.
        flat = indices.reshape(-1).long()
        self.counts.scatter_add_(0, flat, torch.ones_like(flat))

    def compute(self) -> dict[str, torch.Tensor]:
        return codebook_stats(self.counts)


def codebook_stats(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """Usage, perplexity, entropy (bits) and number of used codes of a histogram."""
    counts = counts.float()
    p = counts / counts.sum().clamp_min(1.0)
    h = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return {
        "usage": (counts > 0).float().mean(),
        "perplexity": h.exp(),
        "entropy": h / math.log(2.0),
        "used": (counts > 0).sum().float(),
    }
