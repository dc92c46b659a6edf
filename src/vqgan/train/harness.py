"""The training harness of stage 1 (``fit``) and the priors (``fit_prior``): one Trainer builder, schedule and
run procedure (:func:`run_training`); what differs between the stages comes in through :class:`RunParts`."""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import LearningRateMonitor, RichProgressBar
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from torch.utils.data import DataLoader

from vqgan.config import ConfigError, TrainerSettings, dump_config
from vqgan.config_checks import check_plain_name
from vqgan.data import pin_memory
from vqgan.train.checkpoint import (
    AtomicCheckpointIO,
    GuardedModelCheckpoint,
    atomic_write,
    find_resume_checkpoint,
    verify_checkpoint,
)

log = logging.getLogger(__name__)


class WarmupCosine:
    """Learning-rate factor: linear warm-up to 1 over ``warmup`` steps, then constant (``total=None``) or a
    cosine decay to ``min_ratio`` at ``total`` steps; picklable, so the scheduler's state stays plain data."""

    def __init__(self, warmup: int, total: int | None = None, min_ratio: float = 0.1):
        self.warmup, self.total, self.min_ratio = max(warmup, 0), total, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.total is None or self.total <= self.warmup:
            return 1.0
        progress = min(1.0, (step - self.warmup) / (self.total - self.warmup))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def optimizers(
    cls: type[torch.optim.Optimizer], groups: list[dict], settings: TrainerSettings,
    trainer: L.Trainer | None, **kwargs: Any,
) -> tuple[list[torch.optim.Optimizer], list[dict]]:
    """``configure_optimizers`` for both stages: ``cls`` over ``groups``, fused (3-4x faster on CPU) where the
    device has it, and the schedule, stepped per step (to the Trainer's estimate under ``max_epochs``)."""
    fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    opt = cls(groups, betas=tuple(settings.betas), fused=fused, **kwargs)
    total = None
    if settings.lr_schedule == "cosine":
        by_epochs = settings.max_epochs and trainer is not None
        estimate = trainer.estimated_stepping_batches if by_epochs else math.inf
        total = int(estimate) if math.isfinite(estimate) else settings.max_steps
    factor = WarmupCosine(settings.warmup_steps, total, settings.min_lr_ratio)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return [opt], [{"scheduler": sched, "interval": "step"}]


def publish_validation(module: L.LightningModule, metrics: dict[str, torch.Tensor], bar: str) -> None:
    """Log a validation's ``metrics``, show ``bar`` in the progress bar (as ``val_NAME``), and keep them,
    without their ``val/`` prefix, in ``module.last_val_metrics`` for ``metrics.json``."""
    module.log_dict(metrics)
    module.log(bar.replace("/", "_"), metrics[bar], prog_bar=True, logger=False)
    module.last_val_metrics = {k.split("/", 1)[1]: float(v) for k, v in metrics.items()}
    module.last_val_step = module.global_step


def data_loaders(
    train_ds: Any, val_ds: Any, d: Any, accelerator: str, train_kw: dict[str, Any], **kw: Any
) -> tuple[DataLoader, DataLoader]:
    """Both stages' training loader (``train_kw``: sampler or shuffling; ``drop_last`` when the set holds a
    batch) and validation loader (fixed order), with the batch sizes and workers of the data config ``d``."""
    kw.update(num_workers=d.num_workers, persistent_workers=d.num_workers > 0,
              pin_memory=pin_memory(accelerator))
    drop_last = len(train_ds) >= d.batch_size
    train = DataLoader(train_ds, batch_size=d.batch_size, drop_last=drop_last, **train_kw, **kw)
    return train, DataLoader(val_ds, batch_size=d.val_batch_size or d.batch_size, shuffle=False, **kw)


def log_to_experiments(trainer: L.Trainer, kind: str, tag: str, value: Any, step: int) -> None:
    """``experiment.add_KIND(tag, value, step)`` where a logger has it (TensorBoard); images also to W&B."""
    for logger in trainer.loggers:
        add = getattr(getattr(logger, "experiment", None), f"add_{kind}", None)
        if add is not None:
            add(tag, value, step)
        elif kind == "image" and hasattr(logger, "log_image"):
            logger.log_image(tag, [value], step=step)


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar, labelled with what limits the run: ``step 40/1000`` for a step-limited
    run (Lightning's own label reads ``Epoch 0/-2`` there), ``Epoch 3/9`` when ``max_epochs`` is the limit."""

    def _get_train_description(self, current_epoch: int) -> str:
        t = self.trainer
        text = f"Epoch {current_epoch}" + (f"/{t.max_epochs - 1}" if (t.max_epochs or 0) > 0 else "")
        return text + (f" · step {t.global_step}/{t.max_steps}" if (t.max_steps or 0) > 0 else "")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        if self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id, description=self._get_train_description(trainer.current_epoch))


def build_trainer(
    settings: TrainerSettings, run_dir: Path, callbacks: list[L.Callback], run_name: str, **trainer_kwargs: Any
) -> L.Trainer:
    """The Lightning Trainer of every run: checkpoints (``best``, ``last``, the last ``keep_last_k`` periodic
    ones), loggers, progress bar, validation cadence, hardware, the stage's callbacks and Trainer options."""
    t = settings
    trainer_kwargs = {"strategy": t.strategy, **trainer_kwargs}
    max_steps = min(t.max_steps, 10) if t.debug else t.max_steps
    if t.max_epochs is not None and not t.debug:
        max_steps = -1  # the epochs are the limit
    if t.val_every_n_epochs is not None:
        val = dict(val_check_interval=None, check_val_every_n_epoch=t.val_every_n_epochs)
        periodic = {"every_n_epochs": t.checkpoint_every_n_epochs or t.val_every_n_epochs}
    else:
        val_every = min(t.val_every_n_steps, max_steps) if max_steps > 0 else t.val_every_n_steps
        val = dict(val_check_interval=val_every, check_val_every_n_epoch=None)
        periodic = {"every_n_train_steps": t.checkpoint_every_n_steps or val_every}
        if t.checkpoint_every_n_epochs is not None:
            periodic = {"every_n_epochs": t.checkpoint_every_n_epochs}
    # TensorBoard in RUN_DIR/logs (also with W&B: `vqgan report` reads its events), W&B in RUN_DIR/wandb.
    loggers: list[Any] = []
    if t.logger in ("tensorboard", "wandb"):
        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="logs", version="", default_hp_metric=False))
    if t.logger == "wandb" and not t.debug:
        loggers.append(WandbLogger(project=t.wandb_project or "vqgan", name=run_name, save_dir=str(run_dir)))
    kw = dict(dirpath=run_dir / "checkpoints", auto_insert_metric_name=False, enable_version_counter=False)
    all_callbacks: list[L.Callback] = [
        GuardedModelCheckpoint(filename="best", monitor=t.monitor, mode=t.monitor_mode, save_last=True, **kw),
        GuardedModelCheckpoint(filename="step{step:07d}", monitor="step", mode="max",
                               save_top_k=t.keep_last_k, **periodic, **kw),
        StepProgressBar(),
        *callbacks,
        *([LearningRateMonitor(logging_interval="step")] if loggers else []),
    ]
    return L.Trainer(
        default_root_dir=str(run_dir), max_steps=max_steps,
        max_epochs=t.max_epochs if t.max_epochs is not None and not t.debug else -1,
        max_time=None if t.max_time_minutes is None else timedelta(minutes=t.max_time_minutes),
        **val, limit_val_batches=2 if t.debug else None, num_sanity_val_steps=0,
        log_every_n_steps=1 if t.debug else t.log_every_n_steps, logger=loggers or False,
        callbacks=all_callbacks, plugins=[AtomicCheckpointIO()], accelerator=t.accelerator, devices=t.devices,
        num_nodes=t.num_nodes, precision=t.precision,
        enable_model_summary=False, enable_progress_bar=True,
        benchmark=True,  # cuDNN picks the fastest convolutions for the fixed batch shapes once (default off)
        **trainer_kwargs,
    )


def resolve_run_dir(run_dir: str | Path | None, run_name: str | None) -> Path:
    """``run_dir`` when given, else ``runs/RUN_NAME`` (seed 004's ``--run-name``)."""
    if run_dir is not None:
        return Path(run_dir)
    if not run_name:
        raise ConfigError("no run folder: pass --run-dir DIR or --run-name NAME (which trains in runs/NAME)")
    check_plain_name(run_name, key="--run-name")
    return Path("runs") / run_name


def wants_resume(resume: str | bool | None) -> bool:
    """Whether ``--resume`` asks to resume (``None``, ``False``, ``""`` and ``"false"`` mean a new run)."""
    return resume not in (None, False, "", "false", "False")


def resolve_resume(resume: str | bool | None, run_dir: Path) -> str | None:
    """``True``/``"last"``: :func:`find_resume_checkpoint`; a path: that file, verified; else ``None``."""
    if not wants_resume(resume):
        return None
    if resume in (True, "true", "True", "last"):
        if (found := find_resume_checkpoint(run_dir / "checkpoints")) is None:
            log.warning("--resume last: no checkpoint in %s, starting from scratch", run_dir / "checkpoints")
        return found and str(found)
    path = Path(str(resume))
    if not path.is_file():
        raise FileNotFoundError(f"--resume {path}: no such checkpoint")
    verify_checkpoint(path)
    return str(path)


def check_run_dir(run_dir: Path, resume: str | bool | None) -> None:
    """Refuse to start a new run (no ``resume``) in a folder that holds checkpoints of an earlier one: it
    would overwrite that run's ``config.yaml`` and mix two runs' checkpoints and logs."""
    ckpts = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    if ckpts and not wants_resume(resume):
        raise FileExistsError(
            f"{run_dir} already holds an earlier run ({len(ckpts)} checkpoint(s), e.g. {ckpts[-1].name}). "
            "Pass --resume last to continue it, or choose another --run-dir (or delete the folder) for a new run."
        )


def _remove_if_left_empty(run_dir: Path, written: set[Path]) -> None:
    """Remove ``run_dir`` (made by a failed run) if it holds nothing but folders and the ``written`` files."""
    if run_dir.is_dir() and all(p.is_dir() or p in written for p in run_dir.rglob("*")):
        shutil.rmtree(run_dir, ignore_errors=True)
        log.info("removed %s: the run failed before writing anything", run_dir)


@dataclass
class RunParts:
    """What a stage contributes to :func:`run_training`, built after seeding: its module (which sets
    ``last_val_metrics`` and ``last_val_step``), loaders, resolved config, callbacks, Trainer arguments."""

    module: L.LightningModule
    train_loader: DataLoader
    val_loader: DataLoader
    config: Any
    callbacks: list[L.Callback] = field(default_factory=list)
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)


def quiet_lightning() -> None:
    """Keep Lightning's advice to developers (tips, warnings about deliberate choices) off the terminal."""
    for message in (
        ".*pre-optimization state.*",  # manual optimization needs none saved
        ".*your dataloader is not resumable.*",  # ResumableSampler + ResumeState make resumption exact
        ".*does not have many workers.*",
        ".*in eval mode at the start of training.*",  # the frozen perceptual network is meant to be
    ):
        warnings.filterwarnings("ignore", message=message)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_drop_chatter)


def _drop_chatter(record: logging.LogRecord) -> bool:
    text = record.getMessage()
    return not any(s in text for s in ("litlogger", "in eval mode at the start of training"))


def run_training(
    settings: TrainerSettings, run_dir: str | Path, build: Callable[[], RunParts],
    resume: str | bool | None = None, run_name: str = "run", extra_callbacks: list[L.Callback] | None = None,
    extra_metrics: Callable[[Any], dict[str, Any]] = lambda module: {},
) -> dict[str, Any]:
    """Every stage's run procedure: check the run folder, seed, ``build()`` the parts, save the config, fit,
    write ``last.ckpt`` (full state), validate the final weights unless just done; return the final metrics
    (with ``extra_metrics(module)``; also to ``metrics.json``). A failed new run removes its empty folder."""
    quiet_lightning()
    if settings.logger == "wandb" and not settings.debug:
        try:  # fail before anything is built, in one line
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError("train.logger=wandb needs the wandb package: "
                              "pip install 'vqgan[wandb]' (or pip install wandb)") from None
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume)
    created = not run_dir.exists()
    written: set[Path] = set()
    try:
        L.seed_everything(settings.seed, workers=True, verbose=False)
        parts = build()
        run_dir.mkdir(parents=True, exist_ok=True)
        written.add(dump_config(parts.config, run_dir / "config.yaml"))
        callbacks = [*parts.callbacks, *(extra_callbacks or [])]
        trainer = build_trainer(settings, run_dir, callbacks, run_name, **parts.trainer_kwargs)
        ckpt_path = resolve_resume(resume, run_dir)
        start = time.perf_counter()
        trainer.fit(parts.module, parts.train_loader, parts.val_loader, ckpt_path=ckpt_path, weights_only=True)
        seconds = time.perf_counter() - start
    except BaseException:
        if created:
            _remove_if_left_empty(run_dir, written)
        raise
    module = parts.module
    trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=False)  # full state, to resume
    if module.last_val_step != trainer.global_step:  # validate the final weights unless just done
        trainer.validate(module, parts.val_loader, verbose=False, weights_only=True)
    metrics = {**module.last_val_metrics, "steps": trainer.global_step, "train_seconds": round(seconds, 2),
               "resumed_from": ckpt_path, **extra_metrics(module)}
    if trainer.is_global_zero:
        text = json.dumps(metrics, indent=2, sort_keys=True)
        atomic_write(run_dir / "metrics.json", lambda f: f.write(text.encode()))
    for logger in trainer.loggers:  # close the W&B run, so that a next fit in this process starts its own
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()
    return metrics


def is_rank_zero() -> bool:
    """Whether this process is rank zero (or the only one): what prints a run's final summary."""
    return getattr(rank_zero_only, "rank", 0) == 0
