"""Codebook statistics: usage (fraction of codes hit), perplexity, entropy over a whole evaluation set; code
metrics of a prior's samples; the codebook diagnostics a training run records (``RUN_DIR/diagnostics.npz``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torchmetrics import Metric

from vqgan.quantizers.base import perplexity_and_usage

DIAGNOSTICS_FILE = "diagnostics.npz"


class CodebookUsage(Metric):
    """Histogram of code indices (synchronised across processes); ``compute()`` gives :func:`codebook_stats`,
    of the first stage for residual quantizers (``num_stages > 1``: indices with a last axis of stages)."""

    full_state_update = False

    def __init__(self, codebook_size: int, num_stages: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.codebook_size, self.num_stages = codebook_size, num_stages
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
    """``usage`` (fraction of codes used), ``perplexity`` (``exp`` of the entropy, in codes), ``entropy``
    (bits) and ``used`` (number of codes) of a histogram."""
    stats = perplexity_and_usage(counts)
    return {**stats, "entropy": stats["perplexity"].log() / math.log(2.0), "used": (counts > 0).sum().float()}


def sample_code_metrics(tokens: torch.Tensor, data_histogram: torch.Tensor) -> dict[str, torch.Tensor]:
    """Code usage and perplexity of sampled tokens, and the total-variation distance between their code
    distribution and the data's (0: identical histograms, 1: disjoint)."""
    k = data_histogram.numel()
    counts = torch.bincount(tokens.flatten().long().cpu(), minlength=k)[:k].float()
    stats = codebook_stats(counts)
    p = counts / counts.sum().clamp_min(1)
    q = data_histogram.float().cpu() / data_histogram.float().sum().clamp_min(1)
    tv = 0.5 * (p - q).abs().sum()
    return {"code_usage": stats["usage"], "code_perplexity": stats["perplexity"], "code_tv_distance": tv}


def load_diagnostics(run_dir: str | Path) -> dict[str, np.ndarray]:
    """Arrays saved by the training run's codebook diagnostics in ``RUN_DIR/diagnostics.npz`` (keys: ``step``,
    ``usage``, ``perplexity``, ``dead_codes``, ``restarts`` and, per code, ``code_norms``, ``code_grad_norms``,
    ``code_counts``); ``FileNotFoundError`` saying why when there is none."""
    path = Path(run_dir) / DIAGNOSTICS_FILE
    if not path.is_file():
        reason = f"{path.parent} does not exist" if not path.parent.is_dir() else (
            f"{path.parent} holds none: its run had train.diagnostics_every_n_steps=0, stopped before its first "
            "record, or predates them"
        )
        raise FileNotFoundError(
            f"no codebook diagnostics at {path}: {reason}. `vqgan fit` writes them every "
            "train.diagnostics_every_n_steps steps and at the end of every run (0 disables them)"
        )
    with np.load(path) as data:
        return {k: data[k] for k in data.files}
