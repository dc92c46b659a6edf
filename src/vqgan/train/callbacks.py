"""Callbacks: reconstruction grids of a fixed validation batch, written as PNG and to TensorBoard or W&B."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from vqgan.viz.grids import comparison_grid, save_comparison


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
        if x.dim() == 5:  # video: show the middle frame of each clip
            x = x[:, :, x.shape[2] // 2]
            rec = pl_module.model(pl_module.val_batch_for_samples[: self.max_images]).reconstruction
            rec = rec[:, :, rec.shape[2] // 2]
        else:
            rec = pl_module.model(x).reconstruction
        step = trainer.global_step
        save_comparison(x, rec, self.directory / f"step_{step:07d}.png", scale=2 if x.shape[-1] < 64 else 1)
        grid = comparison_grid(x, rec)
        for logger in trainer.loggers:
            exp = getattr(logger, "experiment", None)
            if hasattr(exp, "add_image"):  # TensorBoard
                exp.add_image("val/reconstructions", grid, step)
            elif hasattr(logger, "log_image"):  # W&B
                logger.log_image("val/reconstructions", [grid], step=step)
