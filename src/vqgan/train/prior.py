"""Stage-2 training: a GPT or MaskGIT prior on a token folder written by ``vqgan encode``.

The run folder mirrors stage 1's::

    RUN_DIR/config.yaml                resolved configuration
    RUN_DIR/checkpoints/last.ckpt      latest state (resume from it); best.ckpt (lowest val/loss); stepNNNNNNN.ckpt
    RUN_DIR/samples/codes_*.png        code-usage histogram of sampled tokens against the data's
    RUN_DIR/samples/step_*.png         decoded samples, when a tokenizer is known
    RUN_DIR/logs/                      TensorBoard event files
    RUN_DIR/metrics.json               final validation metrics and run statistics

Token metrics: loss (cross-entropy in nats), perplexity ``exp(loss)`` and accuracy, on the predicted positions
(all positions for GPT, the masked ones for MaskGIT). After every validation, ``train.num_samples`` token maps are
sampled and their code histogram is compared with the data's (usage, perplexity, total-variation distance).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from torch.utils.data import DataLoader
from torchmetrics import MeanMetric

from vqgan.config import ConfigError, dump_config, from_dict, to_dict
from vqgan.data.tokens import TokenDataset, TokenFolderError, resolve_token_folders
from vqgan.inference import decode_tokens
from vqgan.metrics.codebook import sample_code_metrics
from vqgan.models.io import CheckpointError, load_model
from vqgan.models.prior import PriorExperimentConfig, build_prior
from vqgan.train.checkpoint import AtomicCheckpointIO
from vqgan.train.fit import check_run_dir, resolve_resume, write_json_atomic

log = logging.getLogger(__name__)


class PriorModule(L.LightningModule):
    """A prior, its optimiser (AdamW, warm-up then cosine decay) and token metrics.

    Args:
        config: a :class:`PriorExperimentConfig` as a plain dict (checkpoints stay plain data).
        tokens: metadata of the token folder (codebook size, class names, source tokenizer), stored with the
            checkpoint so that ``vqgan sample`` knows them.
    """

    def __init__(self, config: dict[str, Any], tokens: dict[str, Any] | None = None):
        super().__init__()
        self.save_hyperparameters({"config": config, "tokens": tokens or {}})
        self.cfg: PriorExperimentConfig = from_dict(PriorExperimentConfig, config)
        self.model = build_prior(self.cfg.model)
        self.val_loss, self.val_acc = MeanMetric(), MeanMetric()
        self.register_buffer("data_histogram", torch.zeros(self.cfg.model.vocab_size), persistent=False)
        self.last_val_metrics: dict[str, float] = {}
        self.last_val_step = -1
        self.last_samples: torch.Tensor | None = None
        self.last_sample_labels: torch.Tensor | None = None

    def configure_optimizers(self):
        t = self.cfg.train
        # Weight decay on matrices only (nanoGPT): not on biases, LayerNorms, embeddings of positions.
        decay = [p for n, p in self.model.named_parameters() if p.dim() >= 2 and "pos_emb" not in n]
        no_decay = [p for n, p in self.model.named_parameters() if p.dim() < 2 or "pos_emb" in n]
        groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.betas))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(t.warmup_steps, t.max_steps, t.min_lr_ratio))
        return [opt], [{"scheduler": sched, "interval": "step"}]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.model.training_loss(batch["tokens"], batch.get("label"))
        b = batch["tokens"].shape[0]
        logs = {
            "train/loss": out.loss.detach(),
            "train/perplexity": out.loss.detach().exp(),
            "train/accuracy": out.accuracy,
        }
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=b)
        self.log("loss", out.loss.detach(), prog_bar=True, on_step=True, on_epoch=False, batch_size=b, logger=False)
        return out.loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        # MaskGIT's masks are random: draw them from a generator fixed per batch so validation is comparable.
        g = torch.Generator(device=batch["tokens"].device).manual_seed(10_000 + batch_idx)
        out = self.model.training_loss(batch["tokens"], batch.get("label"), generator=g)
        self.val_loss.update(out.loss, weight=batch["tokens"].shape[0])
        self.val_acc.update(out.accuracy, weight=batch["tokens"].shape[0])

    def sample(self, num: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``num`` token maps with the training config's sampling options; classes cycle when conditional."""
        m, t = self.cfg.model, self.cfg.train
        labels = torch.arange(num, device=self.device) % m.num_classes if m.num_classes > 0 else None
        g = torch.Generator(device=self.device).manual_seed(seed)
        kw = dict(labels=labels, num=num, temperature=t.sample_temperature, top_k=t.sample_top_k,
                  top_p=t.sample_top_p, generator=g)
        if m.kind == "maskgit":
            kw["steps"] = min(t.maskgit_steps, m.num_tokens)
        was = self.model.training
        self.model.eval()
        tokens = self.model.generate(**kw)
        self.model.train(was)
        return tokens, labels

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        metrics = {"val/loss": loss, "val/perplexity": loss.exp(), "val/accuracy": self.val_acc.compute()}
        self.val_loss.reset()
        self.val_acc.reset()
        if self.cfg.train.num_samples > 0 and not self.trainer.sanity_checking:
            tokens, labels = self.sample(self.cfg.train.num_samples, seed=self.cfg.train.seed)
            self.last_samples, self.last_sample_labels = tokens, labels
            metrics.update({f"val/sample_{k}": v for k, v in sample_code_metrics(tokens, self.data_histogram).items()})
        self.log_dict(metrics, prog_bar=False)
        self.log("val_loss", metrics["val/loss"], prog_bar=True, logger=False)
        self.last_val_metrics = {k.split("/", 1)[1]: float(v) for k, v in metrics.items()}
        self.last_val_step = self.global_step


class WarmupCosine:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total`` steps (picklable)."""

    def __init__(self, warmup: int, total: int, min_ratio: float):
        self.warmup, self.total, self.min_ratio = max(warmup, 0), max(total, 1), min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class PriorSamples(L.Callback):
    """After every validation: the code-usage histogram of the module's samples against the data's as a PNG and
    in TensorBoard, and, with a tokenizer, the decoded samples as an image grid."""

    def __init__(self, directory: str | Path, tokenizer: torch.nn.Module | None = None):
        self.directory = Path(directory)
        self.tokenizer = tokenizer

    @torch.no_grad()
    def on_validation_end(self, trainer: L.Trainer, pl_module: PriorModule) -> None:
        # After the module's on_validation_epoch_end (which draws the samples); callbacks' epoch-end hooks run first.
        tokens = pl_module.last_samples
        if tokens is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        step = trainer.global_step
        self.directory.mkdir(parents=True, exist_ok=True)
        from vqgan.viz.plots import save_code_histogram
        from vqgan.viz.samples import image_grid, save_image_grid

        save_code_histogram(tokens, pl_module.data_histogram, self.directory / f"codes_{step:07d}.png")
        for logger in trainer.loggers:
            exp = getattr(logger, "experiment", None)
            if hasattr(exp, "add_histogram"):
                exp.add_histogram("samples/codes", tokens.flatten().cpu(), step)
        if self.tokenizer is not None:
            images = decode_tokens(self.tokenizer, tokens)
            save_image_grid(images, self.directory / f"step_{step:07d}.png")
            for logger in trainer.loggers:
                exp = getattr(logger, "experiment", None)
                if hasattr(exp, "add_image"):
                    exp.add_image("samples/images", image_grid(images), step)
        pl_module.last_samples = None


# -- data ------------------------------------------------------------------------------------------------------
def build_token_loaders(cfg: PriorExperimentConfig, tokens: str | Path | None = None):
    """Training and validation loaders over token folders, and the training dataset (for its histogram)."""
    d = cfg.data
    root = tokens or d.tokens
    if root is None:
        raise ConfigError("no token folder: pass --tokens DIR (or set data.tokens)")
    train_dir, val_dir = resolve_token_folders(root)
    if d.val_tokens is not None:
        val_dir = Path(d.val_tokens)
    full = TokenDataset(train_dir)
    if full.key != "tokens":
        raise TokenFolderError(f"{train_dir} holds {full.manifest.what} latents; priors train on `--what indices`")
    if val_dir is not None:
        train_ds, val_ds = full, TokenDataset(val_dir)
    else:
        # Hold out an evenly spread, deterministic subset.
        n = len(full)
        n_val = max(1, int(round(n * d.val_fraction))) if n > 1 else 0
        val_idx = set(torch.linspace(0, n - 1, n_val).round().long().tolist()) if n_val else set()
        train_ds = full.subset([i for i in range(n) if i not in val_idx] or range(n))
        val_ds = full.subset(sorted(val_idx) or range(n))
    kw: dict[str, Any] = dict(num_workers=d.num_workers, persistent_workers=d.num_workers > 0)
    drop = len(train_ds) >= d.batch_size
    train = DataLoader(train_ds, batch_size=d.batch_size, shuffle=True, drop_last=drop, **kw)
    val = DataLoader(val_ds, batch_size=d.val_batch_size or d.batch_size, shuffle=False, **kw)
    return train, val, train_ds


def sync_model_with_tokens(cfg: PriorExperimentConfig, manifest) -> None:
    """Take the vocabulary, map size and classes from the token folder (they are facts of the data)."""
    m = cfg.model
    h, w = manifest.token_shape
    changes = {}
    if m.vocab_size != manifest.codebook_size:
        changes["vocab_size"] = manifest.codebook_size
    if (m.token_height, m.token_width) != (h, w):
        changes.update(token_height=h, token_width=w)
    if m.num_classes > 0 and m.num_classes != manifest.num_classes:
        changes["num_classes"] = manifest.num_classes
    for k, v in changes.items():
        log.info("model.%s=%s taken from the token folder (config said %s)", k, v, getattr(m, k))
        setattr(m, k, v)


# -- entry point ----------------------------------------------------------------------------------------------
def fit_prior(
    cfg: PriorExperimentConfig,
    tokens_dir: str | Path | None,
    run_dir: str | Path,
    resume: str | bool | None = None,
    tokenizer: str | Path | None = None,
    extra_callbacks: list[L.Callback] | None = None,
) -> dict[str, Any]:
    """Train a prior on the token folder ``tokens_dir`` and return the final metrics (also in ``metrics.json``).

    Args:
        cfg: the experiment; vocabulary size, token map size and classes are taken from the token folder.
        resume: ``"last"``/``True`` (``RUN_DIR/checkpoints/last.ckpt``) or a checkpoint path.
        tokenizer: stage-1 checkpoint to decode validation samples into image grids (default: the one recorded by
            ``vqgan encode``, when it still exists).
    """
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    tokens_dir = tokens_dir or cfg.data.tokens
    cfg.data.tokens = str(tokens_dir) if tokens_dir is not None else None
    train_loader, val_loader, train_ds = build_token_loaders(cfg, tokens_dir)
    manifest = train_ds.manifest
    sync_model_with_tokens(cfg, manifest)
    cfg.validate()
    if train_ds.labels.max() >= max(cfg.model.num_classes, 1) and cfg.model.num_classes > 0:
        raise ConfigError(f"labels go up to {int(train_ds.labels.max())} but model.num_classes={cfg.model.num_classes}")
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    t = cfg.train
    meta = {
        "codebook_size": manifest.codebook_size, "token_shape": manifest.token_shape,
        "class_names": manifest.class_names, "source": manifest.source,
    }
    module = PriorModule(to_dict(cfg), meta)
    module.data_histogram.copy_(train_ds.code_histogram().float())
    if t.compile:
        module.model = torch.compile(module.model)
    dump_config(cfg, run_dir / "config.yaml")
    tok_model = _load_tokenizer(tokenizer, manifest)
    ckpt_dir = run_dir / "checkpoints"
    val_every = min(t.val_every_n_steps, t.max_steps)
    callbacks: list[L.Callback] = [
        ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/loss", mode="min", save_top_k=1,
                        save_last=True, enable_version_counter=False, auto_insert_metric_name=False),
        ModelCheckpoint(dirpath=ckpt_dir, filename="step{step:07d}", monitor="step", mode="max",
                        save_top_k=t.keep_last_k, every_n_train_steps=t.checkpoint_every_n_steps or val_every,
                        auto_insert_metric_name=False, enable_version_counter=False),
        PriorSamples(run_dir / "samples", tok_model),
        *(extra_callbacks or []),
    ]
    loggers: list[Any] = []
    if t.logger == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="logs", version="", default_hp_metric=False))
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    trainer = L.Trainer(
        default_root_dir=str(run_dir), max_steps=t.max_steps, max_epochs=-1, val_check_interval=val_every,
        check_val_every_n_epoch=None, num_sanity_val_steps=0, log_every_n_steps=t.log_every_n_steps,
        logger=loggers or False, callbacks=callbacks, plugins=[AtomicCheckpointIO()], accelerator=t.accelerator,
        devices=t.devices if t.devices == "auto" else int(t.devices) if t.devices.isdigit() else t.devices,
        strategy=t.strategy, num_nodes=t.num_nodes, precision=t.precision, gradient_clip_val=t.grad_clip,
        enable_model_summary=False, enable_progress_bar=True,
    )
    ckpt_path = resolve_resume(resume, run_dir)
    start = time.perf_counter()
    trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt_path, weights_only=True)
    seconds = time.perf_counter() - start
    trainer.save_checkpoint(ckpt_dir / "last.ckpt", weights_only=False)  # full state, to resume
    if module.last_val_step != trainer.global_step:
        trainer.validate(module, val_loader, verbose=False, weights_only=True)
    metrics = {
        **module.last_val_metrics,
        "steps": trainer.global_step,
        "train_seconds": round(seconds, 2),
        "resumed_from": ckpt_path,
        "parameters": sum(p.numel() for p in module.model.parameters()),
    }
    if trainer.is_global_zero:
        write_json_atomic(metrics, run_dir / "metrics.json")
    return metrics


def _load_tokenizer(tokenizer: str | Path | None, manifest) -> torch.nn.Module | None:
    path = tokenizer or manifest.source.get("tokenizer")
    if path is None or not Path(path).exists():
        return None
    try:
        return load_model(path)[0]
    except (CheckpointError, ConfigError) as e:
        if tokenizer is not None:
            raise
        log.warning("not decoding validation samples: tokenizer %s could not be loaded (%s)", path, e)
        return None
