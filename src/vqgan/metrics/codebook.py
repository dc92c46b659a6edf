"""Codebook statistics over a whole evaluation set: usage (fraction of codes hit), perplexity, entropy."""

from __future__ import annotations

import math

import torch
from torchmetrics import Metric


class CodebookUsage(Metric):
    """Accumulates a histogram of code indices (synchronised across processes by torchmetrics).

    ``compute()`` returns ``usage`` (fraction of codes used at least once), ``perplexity`` (``exp`` of the
    entropy of the histogram, in codes), ``entropy`` (bits) and ``used`` (number of codes).
    """

    full_state_update = False

    def __init__(self, codebook_size: int, **kwargs):
        super().__init__(**kwargs)
        self.codebook_size = codebook_size
        self.add_state("counts", default=torch.zeros(codebook_size, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, indices: torch.Tensor) -> None:
        self.counts += torch.bincount(indices.flatten().long(), minlength=self.codebook_size)[: self.codebook_size]

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
