"""``fit``: build datasets, module, Lightning Trainer, loggers and checkpoints from one config, train, and write
the run folder::

    RUN_DIR/config.yaml                resolved configuration
    RUN_DIR/checkpoints/last.ckpt      latest state (resume from it); best.ckpt; stepNNNNNNN.ckpt (last K)
    RUN_DIR/samples/step_*.png         reconstructions of a fixed validation batch
    RUN_DIR/logs/                      TensorBoard event files
    RUN_DIR/metrics.json               final validation metrics and run statistics
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from torch.utils.data import DataLoader

from vqgan.config import ExperimentConfig, dump_config, to_dict
from vqgan.data import build_datasets, collate_skip
from vqgan.train.callbacks import ReconstructionSamples
from vqgan.train.checkpoint import (
    AtomicCheckpointIO,
    GuardedModelCheckpoint,
    ResumableSampler,
    ResumeState,
    find_resume_checkpoint,
    verify_checkpoint,
)
from vqgan.train.diagnostics import CodebookDiagnostics
from vqgan.train.module import VQGANModule

log = logging.getLogger(__name__)


def build_loaders(cfg: ExperimentConfig) -> tuple[DataLoader, DataLoader]:
    """Training (shuffled, drop_last) and validation (fixed order) loaders for ``cfg.data``."""
    d = cfg.data
    train_ds, val_ds = build_datasets(d, cfg.train.seed)
    workers = d.num_workers
    common: dict[str, Any] = dict(num_workers=workers, collate_fn=collate_skip, persistent_workers=workers > 0)
    if workers > 0:
        common["multiprocessing_context"] = "spawn" if os.name == "nt" else None
    drop_last = len(train_ds) >= d.batch_size
    # Iterable datasets (video chunks) shuffle themselves; a DataLoader refuses shuffle=True for them.
    shuffle = not isinstance(train_ds, torch.utils.data.IterableDataset)
    # A map-style set gets a sampler whose order depends on (seed, epoch) only and that can start mid-epoch, so
    # that a resumed run sees exactly the batches an uninterrupted one would have seen.
    sampler = ResumableSampler(train_ds, seed=cfg.train.seed) if shuffle else None
    train = DataLoader(train_ds, batch_size=d.batch_size, sampler=sampler, drop_last=drop_last, **common)
    val = DataLoader(val_ds, batch_size=d.val_batch_size or d.batch_size, shuffle=False, **common)
    return train, val


def write_json_atomic(data: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path


def _wants_resume(resume: str | bool | None) -> bool:
    """Whether ``--resume`` asks to resume (``None``, ``False``, ``""`` and ``"false"`` mean a new run)."""
    return resume not in (None, False, "", "false", "False")


def resolve_resume(resume: str | bool | None, run_dir: Path) -> str | None:
    """``True``/``"last"`` -> the newest *good* checkpoint of ``RUN_DIR/checkpoints`` (a corrupt or truncated
    newest file falls back to the previous one; ``None`` when the folder has none); a path -> that file, verified;
    else ``None``."""
    if not _wants_resume(resume):
        return None
    if resume in (True, "true", "True", "last"):
        found = find_resume_checkpoint(run_dir / "checkpoints")
        if found is None:
            log.warning("--resume last: no checkpoint in %s, starting from scratch", run_dir / "checkpoints")
        return None if found is None else str(found)
    path = Path(str(resume))
    if not path.is_file():
        raise FileNotFoundError(f"--resume {path}: no such checkpoint")
    verify_checkpoint(path)
    return str(path)


class RunDirInUseError(FileExistsError):
    """A new run was asked for in a folder that already holds an earlier run's checkpoints."""


def check_run_dir(run_dir: Path, resume: str | bool | None) -> None:
    """Refuse to start a new run (no ``resume``) in a folder that holds checkpoints of an earlier one: it would
    overwrite that run's ``config.yaml`` and mix two runs' checkpoints and logs. Raises :class:`RunDirInUseError`
    saying how to continue the earlier run or where to start the new one."""
    if _wants_resume(resume):
        return
    ckpts = sorted((run_dir / "checkpoints").glob("*.ckpt")) if (run_dir / "checkpoints").is_dir() else []
    if ckpts:
        raise RunDirInUseError(
            f"{run_dir} already holds an earlier run ({len(ckpts)} checkpoint(s), e.g. {ckpts[-1].name}). "
            "Pass --resume last to continue it, or choose another --run-dir (or delete the folder) for a new run."
        )


def _strategy(cfg: ExperimentConfig) -> str:
    """``train.strategy``, with DDP's unused-parameter detection switched on for GAN training: each step runs two
    backward passes (the generator's, then the discriminator's), each reaching only its own network's
    parameters, which plain DDP reports as an error."""
    strategy = cfg.train.strategy
    if cfg.loss.disc_weight > 0 and strategy in ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook"):
        return f"{strategy}_find_unused_parameters_true"
    return strategy


def build_trainer(cfg: ExperimentConfig, run_dir: Path, extra_callbacks: list[L.Callback] | None = None) -> L.Trainer:
    t = cfg.train
    ckpt_dir = run_dir / "checkpoints"
    max_steps = min(t.max_steps, 10) if t.debug else t.max_steps
    val_every = min(t.val_every_n_steps, max_steps)
    every = t.checkpoint_every_n_steps or val_every
    callbacks: list[L.Callback] = [
        GuardedModelCheckpoint(
            dirpath=ckpt_dir, filename="best", monitor=t.monitor, mode=t.monitor_mode, save_top_k=1, save_last=True,
            enable_version_counter=False, auto_insert_metric_name=False,
        ),
        GuardedModelCheckpoint(
            dirpath=ckpt_dir, filename="step{step:07d}", monitor="step", mode="max", save_top_k=t.keep_last_k,
            every_n_train_steps=every, auto_insert_metric_name=False, enable_version_counter=False,
        ),
        ReconstructionSamples(run_dir / "samples"),
        *([CodebookDiagnostics(run_dir, t.diagnostics_every_n_steps)] if t.diagnostics_every_n_steps > 0 else []),
        *(extra_callbacks or []),
    ]
    loggers: list[Any] = []
    if t.logger in ("tensorboard", "wandb"):
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="logs", version="", default_hp_metric=False))
    if t.logger == "wandb" and not t.debug:
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(WandbLogger(project=t.wandb_project or "vqgan", name=cfg.name, save_dir=str(run_dir)))
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    return L.Trainer(
        default_root_dir=str(run_dir),
        max_steps=max_steps,
        max_time=None if t.max_time_minutes is None else timedelta(minutes=t.max_time_minutes),
        max_epochs=-1,
        val_check_interval=val_every,
        check_val_every_n_epoch=None,
        limit_val_batches=2 if t.debug else None,
        num_sanity_val_steps=0,
        log_every_n_steps=1 if t.debug else t.log_every_n_steps,
        logger=loggers or False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        accelerator=t.accelerator,
        devices=t.devices if t.devices == "auto" else int(t.devices) if t.devices.isdigit() else t.devices,
        strategy=_strategy(cfg),
        num_nodes=t.num_nodes,
        precision=t.precision,
        enable_model_summary=False,
        enable_progress_bar=True,
        deterministic=False,
    )


def fit(
    cfg: ExperimentConfig,
    run_dir: str | Path,
    resume: str | bool | None = None,
    extra_callbacks: list[L.Callback] | None = None,
) -> dict[str, Any]:
    """Train a stage-1 tokenizer and return the final metrics (also written to ``RUN_DIR/metrics.json``).

    Everything that can be checked before training (config consistency, data, perceptual backbone file) is
    checked first, so that a mistake costs seconds rather than a run.
    """
    cfg.validate()
    # Lightning suggests saving pre-optimization state for manual optimization; not needed here.
    warnings.filterwarnings("ignore", message=".*pre-optimization state.*")
    # Mid-epoch resumption is exact here (ResumableSampler + ResumeState), whatever Lightning assumes.
    warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    if cfg.train.accelerator == "cpu" or not torch.cuda.is_available():
        torch.set_float32_matmul_precision("highest")
    else:
        torch.set_float32_matmul_precision("high")
    train_loader, val_loader = build_loaders(cfg)
    module = VQGANModule(to_dict(cfg))
    if cfg.train.compile:
        module.model = torch.compile(module.model)
    dump_config(cfg, run_dir / "config.yaml")
    sampler = train_loader.sampler if isinstance(train_loader.sampler, ResumableSampler) else None
    resume_state = ResumeState(sampler, cfg.data.batch_size)
    trainer = build_trainer(cfg, run_dir, [resume_state, *(extra_callbacks or [])])
    ckpt_path = resolve_resume(resume, run_dir)
    start = time.perf_counter()
    trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt_path, weights_only=True)
    seconds = time.perf_counter() - start
    last = run_dir / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(last, weights_only=False)  # full state: the run can resume from it
    if module.last_val_step != trainer.global_step:  # validate the final weights unless just done
        trainer.validate(module, val_loader, verbose=False, weights_only=True)
    val = module.last_val_metrics
    metrics = {
        **val,
        "codebook_usage": val.get("codebook_usage"),
        "steps": trainer.global_step,
        "train_seconds": round(seconds, 2),
        "resumed_from": ckpt_path,
        **{k: v for k, v in module.counters.items() if k != "nonfinite_streak"},
    }
    if metrics.get("skipped_data"):
        log.warning("%d unreadable data item(s) were skipped (see the warnings above)", metrics["skipped_data"])
    if trainer.is_global_zero:
        write_json_atomic(metrics, run_dir / "metrics.json")
    return metrics
