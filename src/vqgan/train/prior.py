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
from vqgan.data.tokens import TokenDataset, TokenFolderError
from vqgan.metrics.codebook import codebook_stats
from vqgan.models.prior import PriorExperimentConfig, build_prior
from vqgan.train.checkpoint import AtomicCheckpointIO, CheckpointError, load_checkpoint_file
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


def sample_code_metrics(tokens: torch.Tensor, data_histogram: torch.Tensor) -> dict[str, torch.Tensor]:
    """Code usage and perplexity of sampled tokens, and the total-variation distance between their code
    distribution and the data's (0: identical histograms, 1: disjoint)."""
    k = data_histogram.numel()
    counts = torch.bincount(tokens.flatten().long().cpu(), minlength=k)[:k].float()
    stats = codebook_stats(counts)
    p = counts / counts.sum().clamp_min(1)
    q = data_histogram.float().cpu() / data_histogram.float().sum().clamp_min(1)
    return {
        "code_usage": stats["usage"],
        "code_perplexity": stats["perplexity"],
        "code_tv_distance": 0.5 * (p - q).abs().sum(),
    }


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
        from vqgan.viz.samples import image_grid, save_image_grid

        save_code_histogram(tokens, pl_module.data_histogram, self.directory / f"codes_{step:07d}.png")
        for logger in trainer.loggers:
            exp = getattr(logger, "experiment", None)
            if hasattr(exp, "add_histogram"):
                exp.add_histogram("samples/codes", tokens.flatten().cpu(), step)
        if self.tokenizer is not None:
            images = decode_tokens(self.tokenizer, tokens)
            ncol = 8
            if images.dim() == 5:  # clips: one row of frames per sample
                ncol = images.shape[2]
                images = images[:8].transpose(1, 2).flatten(0, 1)
            save_image_grid(images, self.directory / f"step_{step:07d}.png", ncol=ncol)
            for logger in trainer.loggers:
                exp = getattr(logger, "experiment", None)
                if hasattr(exp, "add_image"):
                    exp.add_image("samples/images", image_grid(images), step)
        pl_module.last_samples = None


@torch.no_grad()
def decode_tokens(tokenizer: torch.nn.Module, tokens: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Decode ``(B, h, w)`` code indices (``(B, t, h, w)`` token grids of clips) with a stage-1 tokenizer to images
    in [-1, 1] (clamped): ``(B, C, H, W)``, or clips ``(B, C, T, H, W)``. An image tokenizer decodes a token grid
    frame by frame."""
    device = next(tokenizer.parameters()).device
    if tokens.dim() == 4 and getattr(tokenizer.config, "arch", None) != "video3d":
        b, t = tokens.shape[:2]
        frames = decode_tokens(tokenizer, tokens.flatten(0, 1), batch_size)
        return frames.view(b, t, *frames.shape[1:]).transpose(1, 2)
    out = [
        tokenizer.decode_codes(tokens[i : i + batch_size].to(device)).clamp(-1, 1).cpu()
        for i in range(0, tokens.shape[0], batch_size)
    ]
    return torch.cat(out)


def save_code_histogram(tokens: torch.Tensor, data_histogram: torch.Tensor, path: str | Path) -> Path:
    """Bar plot: share of every code (sorted by data frequency) in the data and in the samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = data_histogram.numel()
    counts = torch.bincount(tokens.flatten().long().cpu(), minlength=k)[:k].float()
    q = data_histogram.float().cpu()
    order = torch.argsort(q, descending=True)
    p_s, p_d = (counts / counts.sum().clamp_min(1))[order], (q / q.sum().clamp_min(1))[order]
    fig, ax = plt.subplots(figsize=(6, 2.5), dpi=100)
    ax.plot(p_d.numpy(), label="data", lw=1)
    ax.plot(p_s.numpy(), label="samples", lw=1, alpha=0.8)
    ax.set_xlabel("code (sorted by data frequency)")
    ax.set_ylabel("share")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


# -- data ------------------------------------------------------------------------------------------------------
def resolve_token_folders(tokens: str | Path) -> tuple[Path, Path | None]:
    """``TOKENS`` itself (a folder with a manifest) or ``TOKENS/train``, and ``TOKENS/val`` if it exists."""
    root = Path(tokens)
    if (root / "manifest.json").is_file():
        val = root / "val"
        return root, val if (val / "manifest.json").is_file() else None
    if (root / "train" / "manifest.json").is_file():
        val = root / "val"
        return root / "train", val if (val / "manifest.json").is_file() else None
    raise TokenFolderError(f"no token folder at {root} (expected {root}/manifest.json): run `vqgan encode` first")


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
    """Take the vocabulary, map (or clip grid) size and classes from the token folder (facts of the data)."""
    m = cfg.model
    *t, h, w = manifest.token_shape
    frames = t[0] if t else 1
    changes = {}
    if m.vocab_size != manifest.codebook_size:
        changes["vocab_size"] = manifest.codebook_size
    if (m.token_height, m.token_width) != (h, w):
        changes.update(token_height=h, token_width=w)
    if m.token_frames != frames:
        changes["token_frames"] = frames
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
    from vqgan.train.checkpoint import load_model

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


def load_prior(path: str | Path, map_location: str = "cpu"):
    """A prior (eval mode) from a training checkpoint written by :func:`fit_prior`.

    Returns ``(model, PriorExperimentConfig, tokens_metadata)``.
    """
    from vqgan.models.pretrained import load_state_dict_strict

    ckpt = load_checkpoint_file(path, map_location)
    try:
        hp = ckpt["hyper_parameters"]
        cfg = from_dict(PriorExperimentConfig, hp["config"])
    except KeyError:
        raise CheckpointError(f"{path} is not a prior checkpoint (no hyper_parameters.config)") from None
    model = build_prior(cfg.model)
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    state = {k.replace("_orig_mod.", ""): v for k, v in state.items()}
    load_state_dict_strict(model, state, source=str(path))
    return model.eval(), cfg, hp.get("tokens", {})


def resolve_class(class_: str | int | None, num_classes: int, class_names: list[str], num: int) -> torch.Tensor | None:
    """Labels ``(num,)`` for ``--class``: ``None`` (unconditional), an index, a class name, or ``all`` (cycle)."""
    if class_ is None or class_ == "":
        return None
    if num_classes == 0:
        raise ValueError("this prior is unconditional (model.num_classes=0); drop --class")
    if str(class_) == "all":
        return torch.arange(num) % num_classes
    if str(class_).lstrip("-").isdigit():
        k = int(class_)
    elif class_ in class_names:
        k = class_names.index(class_)
    else:
        raise ValueError(f"--class {class_!r}: not an index in [0, {num_classes}) nor one of {class_names}")
    if not 0 <= k < num_classes:
        raise ValueError(f"--class {k} is out of range [0, {num_classes})")
    return torch.full((num,), k, dtype=torch.long)


@torch.no_grad()
def generate_images(
    prior: str | Path,
    output: str | Path,
    tokenizer: str | Path | None = None,
    num: int = 16,
    class_: str | int | None = None,
    cfg_scale: float = 1.0,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    steps: int = 8,
    use_cache: bool = True,
    seed: int = 0,
    ncol: int = 8,
    device: str = "cpu",
    prefix_frames: int = 0,
    inputs: str | Path | None = None,
    fps: float = 4.0,
) -> dict[str, Any]:
    """Sample ``num`` token maps from a prior checkpoint, decode them with the tokenizer and write
    ``OUTPUT/grid.png``, ``OUTPUT/images/sample_NNNN.png``, ``OUTPUT/tokens.safetensors`` (tokens and labels) and
    ``OUTPUT/codes.png`` (code usage against the data, when the token folder is still there).

    A prior over clips (``model.token_frames > 1``) writes video grids instead, and predicts frames after the
    first ``prefix_frames`` of the clips in ``inputs``: see :func:`vqgan.video_generation.generate_clips`."""
    from safetensors.torch import save_file

    from vqgan.train.checkpoint import load_model
    from vqgan.viz.samples import save_image_grid, save_images

    model, cfg, meta = load_prior(prior, device)
    tok_path = tokenizer or meta.get("source", {}).get("tokenizer")
    if tok_path is None:
        raise ValueError("no tokenizer known for this prior: pass --tokenizer FILE")
    tok, _ = load_model(tok_path, device)
    if tok.quantize.codebook_size != cfg.model.vocab_size:
        raise ConfigError(
            f"tokenizer {tok_path} has {tok.quantize.codebook_size} codes but the prior models {cfg.model.vocab_size}"
        )
    names = list(meta.get("class_names", []))
    labels = resolve_class(class_, cfg.model.num_classes, names, num)
    if cfg.model.token_frames > 1 or prefix_frames:
        from vqgan.video_generation import generate_clips

        if cfg.model.token_frames == 1:
            raise ValueError("--prefix-frames needs a prior over clips (model.token_frames > 1)")
        return generate_clips(
            model, tok, output, labels, num, names, prefix_frames, inputs, cfg_scale, temperature, top_k, top_p,
            min(steps, cfg.model.num_tokens), use_cache, seed, min(ncol, 8), fps, device,
        )
    g = torch.Generator(device=device).manual_seed(seed)
    kw: dict[str, Any] = dict(num=num, labels=None if labels is None else labels.to(device), temperature=temperature,
                              top_k=top_k, top_p=top_p, cfg_scale=cfg_scale, generator=g)
    start = time.perf_counter()
    if cfg.model.kind == "maskgit":
        tokens = model.generate(steps=min(steps, cfg.model.num_tokens), **kw)
    else:
        tokens = model.generate(use_cache=use_cache, **kw)
    seconds = time.perf_counter() - start
    images = decode_tokens(tok, tokens)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    save_image_grid(images, out / "grid.png", ncol=ncol)
    save_images(images, out / "images", [f"sample_{i:04d}" for i in range(num)])
    lab = labels if labels is not None else torch.full((num,), -1, dtype=torch.long)
    save_file({"tokens": tokens.cpu().contiguous(), "labels": lab.contiguous()}, str(out / "tokens.safetensors"))
    result: dict[str, Any] = {"output": str(out), "num": num, "kind": cfg.model.kind, "sample_seconds": round(seconds, 3)}
    tokens_dir = cfg.data.tokens
    if tokens_dir is not None:
        try:
            hist = TokenDataset(resolve_token_folders(tokens_dir)[0]).code_histogram()
            result.update({k: round(float(v), 4) for k, v in sample_code_metrics(tokens, hist).items()})
            save_code_histogram(tokens, hist, out / "codes.png")
        except TokenFolderError:
            pass
    return result
