"""Stage-2 training: a GPT or MaskGIT prior on a token folder written by ``vqgan encode``, or a flow-matching
prior on a latent folder (``--what continuous|quantized``), normalised with whole-training-set statistics.
Token metrics are on the predicted positions (all for GPT, the masked ones for MaskGIT)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torchmetrics import MeanMetric

from vqgan.config import ConfigError, from_dict, to_dict
from vqgan.data.latents import LatentDataset
from vqgan.data.tokens import TokenDataset, TokenFolderError, read_manifest, resolve_token_folders
from vqgan.inference import decode_tokens
from vqgan.metrics.codebook import sample_code_metrics
from vqgan.models.io import CheckpointError, load_model
from vqgan.models.prior import PriorExperimentConfig, build_prior
from vqgan.models.prior.latent_space import decode_latents, trajectory_images
from vqgan.train.harness import (
    RunParts,
    data_loaders,
    log_to_experiments,
    optimizers,
    publish_validation,
    resolve_run_dir,
    run_training,
)
from vqgan.train.module import track_nonfinite
from vqgan.viz.curves import plot_scalar_curves, read_scalars
from vqgan.viz.plots import save_code_histogram
from vqgan.viz.samples import image_grid, save_image_grid

log = logging.getLogger(__name__)


class PriorModule(L.LightningModule):
    """A prior, its optimiser and metrics. ``config``: a :class:`PriorExperimentConfig` as a dict; ``tokens``:
    the token folder's metadata (codebook size, class names, tokenizer), kept for ``vqgan sample``."""

    def __init__(self, config: dict[str, Any], tokens: dict[str, Any] | None = None):
        super().__init__()
        self.save_hyperparameters({"config": config, "tokens": tokens or {}})
        self.cfg: PriorExperimentConfig = from_dict(PriorExperimentConfig, config)
        self.model = build_prior(self.cfg.model)
        self.flow = self.cfg.model.kind == "flow"
        self.key = "latents" if self.flow else "tokens"  # what the batches hold
        self.val_loss, self.val_acc = MeanMetric(), MeanMetric()
        self.register_buffer("data_histogram", torch.zeros(self.cfg.model.vocab_size), persistent=False)
        self.last_val_metrics: dict[str, float] = {}
        self.last_val_step = -1
        self.last_samples: torch.Tensor | None = None
        self.last_sample_labels: torch.Tensor | None = None
        self.counters = {"skipped_steps": 0, "nonfinite_streak": 0}

    def configure_optimizers(self):
        t = self.cfg.train
        # Weight decay on matrices only (nanoGPT): not on biases, LayerNorms, embeddings of positions.
        decay = [p for n, p in self.model.named_parameters() if p.dim() >= 2 and "pos_emb" not in n]
        no_decay = [p for n, p in self.model.named_parameters() if p.dim() < 2 or "pos_emb" in n]
        groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return optimizers(torch.optim.AdamW, groups, t, self._trainer, lr=t.lr)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        out = self.model.training_loss(batch[self.key], batch.get("label"))
        b = batch[self.key].shape[0]
        finite = bool(torch.isfinite(out.loss))
        self.counters["skipped_steps"] += not finite
        track_nonfinite(self, finite, "prior loss", "loss",
                        "Lower train.lr or raise train.max_nonfinite_steps.")
        if not finite:
            # Skip the update (return None); under DDP every rank must step, so only the checkpoints wait.
            return None if self.trainer.world_size == 1 else out.loss
        loss = out.loss.detach()
        logs = out.logs if self.flow else {"perplexity": loss.exp(), "accuracy": out.accuracy}
        logs = {f"train/{k}": v for k, v in {"loss": loss, **logs}.items()}
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=b)
        self.log("loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=b, logger=False)
        return out.loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        # MaskGIT's masks and the flow's noise and times are random: draw them from a generator fixed per batch
        # so validation is comparable.
        x = batch[self.key]
        g = torch.Generator(device=x.device).manual_seed(10_000 + batch_idx)
        out = self.model.training_loss(x, batch.get("label"), generator=g)
        self.val_loss.update(out.loss, weight=x.shape[0])
        if out.accuracy is not None:
            self.val_acc.update(out.accuracy, weight=x.shape[0])

    def sample(self, num: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``num`` token maps (latents for a flow prior) with the training config's options; classes cycle."""
        m, t = self.cfg.model, self.cfg.train
        labels = torch.arange(num, device=self.device) % m.num_classes if m.num_classes > 0 else None
        kw = dict(labels=labels, num=num, generator=torch.Generator(device=self.device).manual_seed(seed))
        if not self.flow:
            kw.update(temperature=t.sample_temperature, top_k=t.sample_top_k, top_p=t.sample_top_p)
        if m.kind == "maskgit":
            kw["steps"] = min(t.maskgit_steps, m.num_tokens)
        return _generate(self.model, **kw), labels

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        metrics = {"val/loss": loss}
        if not self.flow:
            metrics.update({"val/perplexity": loss.exp(), "val/accuracy": self.val_acc.compute()})
        self.val_loss.reset()
        self.val_acc.reset()
        if self.cfg.train.num_samples > 0 and not self.trainer.sanity_checking:
            tokens, labels = self.sample(self.cfg.train.num_samples, seed=self.cfg.train.seed)
            self.last_samples, self.last_sample_labels = tokens, labels
            if not self.flow:
                codes = sample_code_metrics(tokens, self.data_histogram)
                metrics.update({f"val/sample_{k}": v for k, v in codes.items()})
        publish_validation(self, metrics, "val/loss")


def _generate(model: torch.nn.Module, **kwargs: Any) -> Any:
    """``model.generate(**kwargs)`` in eval mode, restoring the mode after."""
    was = model.training
    model.eval()
    try:
        return model.generate(**kwargs)
    finally:
        model.train(was)


class PriorSamples(L.Callback):
    """After every validation: the samples' code histogram and, with a tokenizer, the decoded samples (a flow
    prior's via ``projection``, ``snap``-ped to codes, and its ODE trajectory); at the end, the loss curve."""

    def __init__(self, directory: str | Path, tokenizer: torch.nn.Module | None = None,
                 projection: torch.nn.Module | None = None, snap: bool = False):
        self.directory = Path(directory)
        self.tokenizer, self.projection, self.snap = tokenizer, projection, snap

    def on_train_end(self, trainer: L.Trainer, pl_module: PriorModule) -> None:
        if not trainer.is_global_zero:
            return
        try:
            scalars = read_scalars(Path(trainer.default_root_dir))
        except FileNotFoundError:  # no TensorBoard logger (train.logger none)
            return
        if tags := [t for t in ("train/loss", "val/loss") if t in scalars]:
            plot_scalar_curves(scalars, tags, self.directory / "loss.png", ylabel=f"{pl_module.cfg.model.kind} loss")

    def _flow_figures(self, pl_module: PriorModule, latents: torch.Tensor, step: int) -> torch.Tensor:
        k, labels = min(4, latents.shape[0]), pl_module.last_sample_labels
        labels = None if labels is None else labels[:k]
        g = torch.Generator(device=pl_module.device).manual_seed(pl_module.cfg.train.seed)
        _, trajectory = _generate(pl_module.model, num=k, labels=labels, generator=g, return_trajectory=True)
        columns = min(6, len(trajectory))
        frames = trajectory_images(self.tokenizer, trajectory, columns, self.projection, self.snap)
        save_image_grid(frames, self.directory / f"trajectory_{step:07d}.png", ncol=columns)
        return decode_latents(self.tokenizer, latents, self.projection, self.snap)

    @torch.no_grad()
    def on_validation_end(self, trainer: L.Trainer, pl_module: PriorModule) -> None:
        # After the module's on_validation_epoch_end (which draws the samples); callbacks' epoch-end hooks run first.
        tokens = pl_module.last_samples
        if tokens is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        step = trainer.global_step
        self.directory.mkdir(parents=True, exist_ok=True)
        if not pl_module.flow:
            save_code_histogram(tokens, pl_module.data_histogram, self.directory / f"codes_{step:07d}.png")
            log_to_experiments(trainer, "histogram", "samples/codes", tokens.flatten().cpu(), step)
        if self.tokenizer is not None:
            images = (self._flow_figures(pl_module, tokens, step) if pl_module.flow
                      else decode_tokens(self.tokenizer, tokens))
            ncol = 8
            if images.dim() == 5:  # clips: one row of frames per sample
                ncol = images.shape[2]
                images = images[:8].transpose(1, 2).flatten(0, 1)
            save_image_grid(images, self.directory / f"step_{step:07d}.png", ncol=ncol)
            log_to_experiments(trainer, "image", "samples/images", image_grid(images), step)
        pl_module.last_samples = None


def build_token_loaders(cfg: PriorExperimentConfig, tokens: str | Path | None = None, projection=None):
    """Training and validation loaders over token folders (a flow prior's latents through ``projection``) and
    the training set."""
    d = cfg.data
    if (root := tokens or d.tokens) is None:
        raise ConfigError("no token folder: pass --tokens DIR (or set data.tokens)")
    train_dir, val_dir = resolve_token_folders(root)
    val_dir = Path(d.val_tokens) if d.val_tokens is not None else val_dir
    flow, what = cfg.model.kind == "flow", read_manifest(train_dir).what
    if not flow and what != "indices":  # (LatentDataset refuses an index folder itself)
        raise TokenFolderError(
            f"{train_dir} holds {what} latents; GPT and MaskGIT train on `--what indices` (or use model.kind=flow)"
        )

    def load(folder: Path) -> TokenDataset | LatentDataset:
        return LatentDataset(folder, projection) if flow else TokenDataset(folder)

    full = load(train_dir)
    if val_dir is not None:
        train_ds, val_ds = full, load(val_dir)
    else:
        # Hold out an evenly spread, deterministic subset.
        n = len(full)
        n_val = max(1, int(round(n * d.val_fraction))) if n > 1 else 0
        val_idx = set(torch.linspace(0, n - 1, n_val).round().long().tolist()) if n_val else set()
        train_ds = full.subset([i for i in range(n) if i not in val_idx] or range(n))
        val_ds = full.subset(sorted(val_idx) or range(n))
    return (*data_loaders(train_ds, val_ds, d, cfg.train.accelerator, {"shuffle": True}), train_ds)


def sync_model_with_tokens(cfg: PriorExperimentConfig, manifest, latent_shape: tuple[int, ...] | None = None) -> None:
    """Take the vocabulary, map (or clip grid) size and classes from the token folder (they are facts of the data);
    for a flow prior, the latent channels and map size from ``latent_shape`` ``(C, h, w)`` (after any projection)."""
    m = cfg.model
    if latent_shape is not None:
        c, h, w = latent_shape
        facts = {"latent_channels": c, "token_frames": 1}
    else:
        *t, h, w = manifest.token_shape
        facts = {"token_frames": t[0] if t else 1}
    facts.update(vocab_size=manifest.codebook_size, token_height=h, token_width=w)
    if m.num_classes > 0:
        facts["num_classes"] = manifest.num_classes
    for k, v in facts.items():
        if getattr(m, k) != v:
            log.info("model.%s=%s taken from the token folder (config said %s)", k, v, getattr(m, k))
            setattr(m, k, v)


def fit_prior(
    cfg: PriorExperimentConfig, tokens_dir: str | Path | None, run_dir: str | Path | None = None,
    resume: str | bool | None = None, tokenizer: str | Path | None = None,
    extra_callbacks: list[L.Callback] | None = None, run_name: str | None = None,
) -> dict[str, Any]:
    """Train a prior on ``tokens_dir``; return the final metrics. Options as for :func:`vqgan.train.fit`;
    ``tokenizer`` decodes validation samples (default: the one recorded by ``vqgan encode``, if it exists)."""
    run_dir = resolve_run_dir(run_dir, run_name)
    tokens_dir = tokens_dir or cfg.data.tokens
    cfg.data.tokens = str(tokens_dir) if tokens_dir is not None else None
    cfg.train.validate()

    def build() -> RunParts:
        flow = cfg.model.kind == "flow"
        projection = None
        if flow and cfg.data.projection is not None:
            from vqgan.interop.projection import load_projection

            projection = load_projection(cfg.data.projection)
        train_loader, val_loader, train_ds = build_token_loaders(cfg, tokens_dir, projection)
        manifest = train_ds.manifest
        sync_model_with_tokens(cfg, manifest, train_ds.latent_shape if flow else None)
        cfg.validate()
        top = int(train_ds.labels.max())
        if 0 < cfg.model.num_classes <= top:
            raise ConfigError(f"labels go up to {top} but model.num_classes={cfg.model.num_classes}")
        keys = ("codebook_size", "token_shape", "class_names", "source", "what")
        meta = {k: getattr(manifest, k) for k in keys}
        if projection is not None:
            meta["projection"] = str(Path(cfg.data.projection).resolve())
        module = PriorModule(to_dict(cfg), meta)
        if flow:
            # Whole-set statistics of the training latents, streamed once; stored in the checkpoint.
            module.model.set_statistics(*train_ds.statistics())
        else:
            module.data_histogram.copy_(train_ds.code_histogram().float())
        if cfg.train.compile:
            # In place: the checkpoint keys stay an eager run's (torch.compile's wrapper adds "_orig_mod.").
            module.model.compile()
        tok = _load_tokenizer(tokenizer, manifest, meta.get("projection"))
        samples = PriorSamples(run_dir / "samples", tok, projection, cfg.model.snap_to_codes)
        return RunParts(module, train_loader, val_loader, cfg, [samples],
                        trainer_kwargs={"gradient_clip_val": cfg.train.grad_clip})

    def extra(module: PriorModule) -> dict[str, Any]:
        return {"parameters": sum(p.numel() for p in module.model.parameters()),
                "skipped_steps": module.counters["skipped_steps"]}

    return run_training(cfg.train, run_dir, build, resume, run_name or cfg.name, extra_callbacks, extra)


def _load_tokenizer(tokenizer: str | Path | None, manifest, projection: str | None = None) -> torch.nn.Module | None:
    path = tokenizer or manifest.source.get("tokenizer")
    if projection is not None and (Path(projection) / "decoder").is_dir():
        path = Path(projection) / "decoder"  # the decoder fine-tuned through the projection
    if path is None or not Path(path).exists():
        return None
    try:
        return load_model(path)[0]
    except (CheckpointError, ConfigError) as e:
        if tokenizer is not None:
            raise
        log.warning("not decoding validation samples: tokenizer %s could not be loaded (%s)", path, e)
        return None
