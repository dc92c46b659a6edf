"""Codebook diagnostics (seed 002's plots, for every run and quantizer) recorded every
``train.diagnostics_every_n_steps`` steps and at the end, for the quantizer (a residual one's first stage).

File format, ``RUN_DIR/diagnostics.npz`` (written atomically): ``step (T,)`` int64; scalars ``usage``,
``perplexity`` (float64), ``dead_codes``, ``restarts`` (int64), each ``(T,)``; per-code ``code_norms``,
``code_grad_norms``, ``code_counts`` ``(T, K)`` float32, left out for implicit codebooks over 65,536 codes.
Read it with :func:`vqgan.metrics.codebook.load_diagnostics`. A record syncs with the host once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from vqgan.metrics.codebook import DIAGNOSTICS_FILE, load_diagnostics  # noqa: F401 - the reader of what this writes
from vqgan.quantizers.base import Quantizer, perplexity_and_usage
from vqgan.train.checkpoint import atomic_write
from vqgan.train.harness import log_to_experiments

SCALARS = ("usage", "perplexity", "dead_codes", "restarts")
_DTYPES = {"step": np.int64, "usage": np.float64, "perplexity": np.float64, "dead_codes": np.int64,
           "restarts": np.int64, "code_norms": np.float32, "code_grad_norms": np.float32, "code_counts": np.float32}


def find_quantizer(module: torch.nn.Module) -> Quantizer:
    """The outermost :class:`Quantizer` in ``module`` (pre-order: a residual one before its stages)."""
    for m in module.modules():
        if isinstance(m, Quantizer):
            return m
    raise ValueError(f"{type(module).__name__} contains no Quantizer")


class CodebookDiagnostics(L.Callback):
    """Record codebook statistics every ``every_n_steps`` steps; per code up to ``max_codes`` codes."""

    def __init__(self, run_dir: str | Path, every_n_steps: int = 50, max_codes: int = 65536):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be at least 1, got {every_n_steps}")
        self.path = Path(run_dir) / DIAGNOSTICS_FILE
        self.every_n_steps, self.max_codes = every_n_steps, max_codes
        self._last_step = -1  # records and _previous_codes start in on_train_start

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        start = trainer.global_step
        self.records: dict[str, list[Any]] = {k: [] for k in _DTYPES}
        if start > 0 and self.path.is_file():  # resumed: keep what was recorded up to the checkpoint
            old = load_diagnostics(self.path.parent)
            self.records.update({k: list(old[k][old["step"] <= start]) for k in self.records if k in old})
        target = find_quantizer(pl_module).diagnostic_target
        target.pop_window()
        self._previous_codes = self._codes(target)
        self._last_step = start

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step % self.every_n_steps == 0 and step != self._last_step:
            self.record(trainer, pl_module, step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if step != self._last_step and step > 0:
            self.record(trainer, pl_module, step)

    def _codes(self, target: Quantizer) -> torch.Tensor | None:
        return target.codebook.detach().float().clone() if target.codebook_size <= self.max_codes else None

    @torch.no_grad()
    def record(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> dict[str, Any]:
        """Read the quantizer's statistics, append them, save the file and log them (on rank 0)."""
        self._last_step = step
        target = find_quantizer(pl_module).diagnostic_target
        window = target.pop_window()  # on every rank, so that the windows stay aligned
        counts = window["counts"]
        stats = perplexity_and_usage(counts)
        scalars = torch.stack(
            [stats["usage"], stats["perplexity"], target.dead_codes().sum().float(), window["restarts"].float()]
        ).tolist()
        row: dict[str, Any] = {"step": step, **dict(zip(SCALARS, scalars, strict=True))}
        codes = self._codes(target)
        if codes is not None:
            grad = target.codebook_grad() if target.learns_codebook_by_gradient else None
            if grad is not None:
                grad_norms = grad.detach().float().norm(dim=1)
            elif self._previous_codes is not None and self._previous_codes.shape == codes.shape:
                grad_norms = (codes - self._previous_codes).norm(dim=1)
            else:
                grad_norms = torch.zeros(codes.shape[0], device=codes.device)
            self._previous_codes = codes
            row["code_norms"] = codes.norm(dim=1).cpu().numpy()
            row["code_grad_norms"] = grad_norms.cpu().numpy()
            row["code_counts"] = counts.float().cpu().numpy()
        if trainer.is_global_zero:
            for k, v in row.items():
                self.records[k].append(v)
            arrays = {k: np.asarray(v, dtype=_DTYPES[k]) for k, v in self.records.items()
                      if len(v) or k in ("step", *SCALARS)}
            atomic_write(self.path, lambda f: np.savez(f, **arrays))
            for logger in trainer.loggers:
                logger.log_metrics({f"diag/{k}": float(row[k]) for k in SCALARS}, step=step)
            if "code_norms" in row:
                log_to_experiments(trainer, "histogram", "diag/code_norms", row["code_norms"], step)
        return row
