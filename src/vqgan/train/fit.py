"""``fit``: stage 1's data, module and callbacks, trained by :mod:`vqgan.train.harness`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from vqgan.config import ExperimentConfig, to_dict
from vqgan.data import build_datasets, collate_skip
from vqgan.train.checkpoint import ResumableSampler, ResumeState
from vqgan.train.diagnostics import CodebookDiagnostics
from vqgan.train.harness import RunParts, data_loaders, log_to_experiments, resolve_run_dir, run_training
from vqgan.train.module import VQGANModule
from vqgan.viz.grids import comparison_grid, save_comparison

log = logging.getLogger(__name__)


def build_loaders(cfg: ExperimentConfig) -> tuple[DataLoader, DataLoader]:
    """Training (shuffled, drop_last) and validation (fixed order) loaders for ``cfg.data``."""
    train_ds, val_ds = build_datasets(cfg.data, cfg.train.seed)
    # A map-style set gets a sampler that resumes mid-epoch exactly; iterable ones (video chunks) shuffle.
    iterable = isinstance(train_ds, torch.utils.data.IterableDataset)
    train_kw = {"sampler": None if iterable else ResumableSampler(train_ds, seed=cfg.train.seed)}
    return data_loaders(train_ds, val_ds, cfg.data, cfg.train.accelerator, train_kw, collate_fn=collate_skip)


class ReconstructionSamples(L.Callback):
    """After every validation, the first (fixed) validation batch reconstructed: ``samples/``, loggers."""

    def __init__(self, directory: str | Path, max_images: int = 16):
        self.directory, self.max_images = Path(directory), max_images

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


def fit(
    cfg: ExperimentConfig, run_dir: str | Path | None = None, resume: str | bool | None = None,
    extra_callbacks: list[L.Callback] | None = None, run_name: str | None = None,
) -> dict[str, Any]:
    """Train a stage-1 tokenizer; return the final metrics. ``run_dir=None`` trains in ``runs/RUN_NAME``;
    ``resume`` is ``"last"`` or a checkpoint path; ``run_name`` (default ``cfg.name``) names the W&B run."""
    cfg.validate()
    run_dir = resolve_run_dir(run_dir, run_name)
    on_gpu = cfg.train.accelerator != "cpu" and torch.cuda.is_available()
    torch.set_float32_matmul_precision("high" if on_gpu else "highest")

    def build() -> RunParts:
        train_loader, val_loader = build_loaders(cfg)
        module = VQGANModule(to_dict(cfg))
        if cfg.train.compile:
            # In place, the decoder's last layer eager (for the adaptive weight; see VQModel.compile).
            module.model.compile()
        sampler = train_loader.sampler if isinstance(train_loader.sampler, ResumableSampler) else None
        every = cfg.train.diagnostics_every_n_steps
        diagnostics = [CodebookDiagnostics(run_dir, every)] if every > 0 else []
        callbacks = [ResumeState(sampler, cfg.data.batch_size), ReconstructionSamples(run_dir / "samples"), *diagnostics]
        # GAN training: each of a step's two backward passes reaches only its own network's parameters, which
        # plain DDP reports as an error unless it looks for unused parameters.
        strategy = cfg.train.strategy
        if cfg.loss.disc_weight > 0 and strategy in ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook"):
            strategy += "_find_unused_parameters_true"
        return RunParts(module, train_loader, val_loader, cfg, callbacks, {"strategy": strategy})

    def extra(module: VQGANModule) -> dict[str, Any]:
        counters = {k: v for k, v in module.counters.items() if k != "nonfinite_streak"}
        if n := counters["skipped_data"]:
            log.warning("%d unreadable data item(s) were skipped (see the warnings above)", n)
        return {"codebook_usage": module.last_val_metrics.get("codebook_usage"), **counters}

    return run_training(cfg.train, run_dir, build, resume, run_name or cfg.name, extra_callbacks, extra)
