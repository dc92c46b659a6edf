"""Codebook diagnostics recorded during training (the plots of seed 002, for every run and every quantizer).

Every ``train.diagnostics_every_n_steps`` steps, and once more at the end of training (so that a run shorter than
the interval has them too), :class:`CodebookDiagnostics` records, for the quantizer of the
model (the first stage of a residual quantizer):

* ``usage`` (fraction of codes hit since the previous record), ``perplexity`` (of those hits), ``dead_codes``
  (codes whose running usage is below the restart threshold), ``restarts`` (codes restarted since the previous
  record);
* per code: ``code_norms`` (L2 norm of each code in the latent space the decoder reads), ``code_grad_norms`` (norm
  of each code's gradient at that step for codebooks learned by gradients; for EMA, SimVQ, FSQ and LFQ codebooks,
  the norm of each code's change since the previous record) and ``code_counts`` (hits since the previous record).

They are written atomically to ``RUN_DIR/diagnostics.npz`` (arrays ``step (T,)``, scalars ``(T,)``, per-code arrays
``(T, K)`` float32; per-code arrays are left out for implicit codebooks larger than 65,536 codes) and logged to
TensorBoard as ``diag/usage``, ``diag/perplexity``, ``diag/dead_codes``, ``diag/restarts`` and the histogram
``diag/code_norms``. :func:`vqgan.metrics.codebook.load_diagnostics` reads the file back for plotting.

Recording reads the statistics back to the host once per record, never in the steps between.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from vqgan.metrics.codebook import DIAGNOSTICS_FILE, load_diagnostics  # noqa: F401 - the reader of what this writes
from vqgan.quantizers.base import Quantizer, perplexity_and_usage

SCALARS = ("usage", "perplexity", "dead_codes", "restarts")
PER_CODE = ("code_norms", "code_grad_norms", "code_counts")
_DTYPES = {"step": np.int64, "usage": np.float64, "perplexity": np.float64, "dead_codes": np.int64,
           "restarts": np.int64, "code_norms": np.float32, "code_grad_norms": np.float32, "code_counts": np.float32}


def find_quantizer(module: torch.nn.Module) -> Quantizer:
    """The outermost :class:`Quantizer` inside ``module`` (``modules()`` is pre-order, so a residual quantizer is
    found before its stages; works through ``torch.compile`` wrappers)."""
    for m in module.modules():
        if isinstance(m, Quantizer):
            return m
    raise ValueError(f"{type(module).__name__} contains no Quantizer")


def save_diagnostics(records: dict[str, list[Any]], path: str | Path) -> Path:
    """Write ``records`` (lists of per-record values) as ``npz`` atomically: a temporary file, then ``os.replace``."""
    path = Path(path)
    arrays = {k: np.asarray(v, dtype=_DTYPES.get(k)) for k, v in records.items() if len(v) or k in ("step", *SCALARS)}
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)
    return path


class CodebookDiagnostics(L.Callback):
    """Record codebook statistics every ``every_n_steps`` training steps (see the module docstring).

    Args:
        run_dir: folder of the run; the file is ``run_dir/diagnostics.npz``.
        every_n_steps: record interval in optimizer steps.
        max_codes: per-code arrays are recorded only for codebooks up to this size.
    """

    def __init__(self, run_dir: str | Path, every_n_steps: int = 50, max_codes: int = 65536):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be at least 1, got {every_n_steps}")
        self.path = Path(run_dir) / DIAGNOSTICS_FILE
        self.every_n_steps = every_n_steps
        self.max_codes = max_codes
        self.records: dict[str, list[Any]] = {k: [] for k in ("step", *SCALARS, *PER_CODE)}
        self._previous_codes: torch.Tensor | None = None
        self._last_step = -1

    # -- Lightning hooks ------------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        start = trainer.global_step
        self.records = {k: [] for k in ("step", *SCALARS, *PER_CODE)}
        if start > 0 and self.path.is_file():  # resumed: keep what was recorded up to the checkpoint
            old = load_diagnostics(self.path.parent)
            keep = old["step"] <= start
            for k in self.records:
                if k in old:
                    self.records[k] = list(old[k][keep])
        target = find_quantizer(pl_module).diagnostic_target
        target.pop_window()
        self._previous_codes = self._codes(target)
        self._last_step = start

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step % self.every_n_steps == 0 and step != self._last_step:
            self.record(trainer, pl_module, step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if step != self._last_step and step > 0:
            self.record(trainer, pl_module, step)

    # -- recording ------------------------------------------------------------------------------------------
    def _codes(self, target: Quantizer) -> torch.Tensor | None:
        if target.codebook_size > self.max_codes:
            return None
        with torch.no_grad():
            return target.codebook.detach().float().clone()

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
            save_diagnostics(self.records, self.path)
            self._log(trainer, row, step)
        return row

    @staticmethod
    def _log(trainer: L.Trainer, row: dict[str, Any], step: int) -> None:
        for logger in trainer.loggers:
            logger.log_metrics({f"diag/{k}": float(row[k]) for k in SCALARS}, step=step)
            experiment = getattr(logger, "experiment", None)
            if "code_norms" in row and hasattr(experiment, "add_histogram"):
                experiment.add_histogram("diag/code_norms", row["code_norms"], step)
