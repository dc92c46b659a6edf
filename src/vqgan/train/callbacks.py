"""Callbacks: reconstruction grids of a fixed validation batch, written as PNG and to TensorBoard or W&B."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from vqgan.viz.grids import comparison_grid, save_comparison


def log_to_experiments(trainer: L.Trainer, kind: str, tag: str, value: Any, step: int) -> None:
    """``experiment.add_KIND(tag, value, step)`` on every logger whose experiment has it (TensorBoard); an
    image also goes to W&B (``log_image``)."""
    for logger in trainer.loggers:
        add = getattr(getattr(logger, "experiment", None), f"add_{kind}", None)
        if add is not None:
            add(tag, value, step)
        elif kind == "image" and hasattr(logger, "log_image"):
            logger.log_image(tag, [value], step=step)


class ReconstructionSamples(L.Callback):
    """After every validation, reconstruct the first validation batch (fixed: the validation set is not
    shuffled) and save ``samples/step_XXXXXXX.png`` under the run folder, and the grid to TensorBoard or W&B."""

    def __init__(self, directory: str | Path, max_images: int = 16):
        self.directory = Path(directory)
        self.max_images = max_images

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        x = getattr(pl_module, "val_batch_for_samples", None)
        if x is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        x = x[: self.max_images]
        rec = pl_module.model(x).reconstruction
        if x.dim() == 5:  # video: show the middle frame of each clip
            x, rec = x[:, :, x.shape[2] // 2], rec[:, :, rec.shape[2] // 2]
        step = trainer.global_step
        save_comparison(x, rec, self.directory / f"step_{step:07d}.png", scale=2 if x.shape[-1] < 64 else 1)
        log_to_experiments(trainer, "image", "val/reconstructions", comparison_grid(x, rec), step)
