"""Stage-1 (VQ-VAE, VQGAN) Lightning module, manual optimization: one optimizer, two parameter groups, a
step per batch (``global_step`` counts batches). Unlike several public implementations, each loss reaches only
its own network. A non-finite loss or gradient skips that network's update and is counted."""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
import torch
from torchmetrics import MeanMetric

from vqgan.config import ExperimentConfig, from_dict
from vqgan.losses import VQGANLoss, disc_factor
from vqgan.metrics import CodebookUsage, psnr, ssim
from vqgan.models import PatchDiscriminator, build_model
from vqgan.train.harness import optimizers, publish_validation
from vqgan.train.step import (
    Backward,
    StepGradients,
    discriminator_forward_backward,
    generator_forward_backward,
)

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Raised after ``train.max_nonfinite_steps`` consecutive steps with a NaN/Inf loss or gradient."""


def track_nonfinite(module: L.LightningModule, finite: bool, what: str, quantity: str, advice: str) -> None:
    """Reset ``module.counters["nonfinite_streak"]`` after a finite step, else advance it, warn (``what``) and
    raise :class:`NonFiniteLossError` once it reaches ``train.max_nonfinite_steps``."""
    c = module.counters
    c["nonfinite_streak"] = 0 if finite else c["nonfinite_streak"] + 1
    if finite:
        return
    log.warning("step %d: non-finite %s (%d in a row)", module.global_step, what, c["nonfinite_streak"])
    if c["nonfinite_streak"] >= module.cfg.train.max_nonfinite_steps:
        raise NonFiniteLossError(
            f"{c['nonfinite_streak']} consecutive steps with a non-finite {quantity} "
            f"(step {module.global_step}); stopping. The last good checkpoint is kept. {advice}"
        )


class VQGANModule(L.LightningModule):
    """Autoencoder, optional PatchGAN discriminator, VQGAN loss; ``config``: an ExperimentConfig as a dict."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.cfg: ExperimentConfig = from_dict(ExperimentConfig, config)
        self.model = build_model(self.cfg.model)
        self.loss_fn = VQGANLoss(self.cfg.loss)
        adversarial = self.cfg.loss.disc_weight > 0
        out_ch = self.cfg.model.out_channels or self.cfg.model.in_channels
        self.discriminator = PatchDiscriminator(self.cfg.discriminator, out_ch) if adversarial else None
        if self.cfg.train.channels_last:
            # NHWC weights as well as NHWC inputs (training_step), so that oneDNN / cuDNN don't reorder at every call.
            for net in [n for n in (self.model, self.discriminator) if n is not None]:
                net.to(memory_format=torch.channels_last)
        self.automatic_optimization = False
        self.val_psnr, self.val_ssim, self.val_rec = MeanMetric(), MeanMetric(), MeanMetric()
        q = self.model.quantize
        self.val_usage = CodebookUsage(q.codebook_size, num_stages=q.num_stages)
        self.counters = {"skipped_generator": 0, "skipped_discriminator": 0, "skipped_data": 0, "nonfinite_streak": 0}
        self.val_batch_for_samples: torch.Tensor | None = None
        self.last_val_metrics: dict[str, float] = {}
        self.last_val_step = -1
        # Seed 000's chunk schedule: whether the current batch comes from GAN passes (None: no chunk schedule).
        self._batch_gan: bool | None = None

    def generator_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def discriminator_parameters(self) -> list[torch.nn.Parameter]:
        return [] if self.discriminator is None else [p for p in self.discriminator.parameters() if p.requires_grad]

    def configure_optimizers(self):
        t = self.cfg.train
        groups = [{"params": self.generator_parameters(), "lr": t.lr, "name": "generator"}]
        if self.discriminator is not None:
            groups.append({"params": self.discriminator_parameters(), "lr": t.lr_disc or t.lr, "name": "discriminator"})
        return optimizers(torch.optim.Adam, groups, t, self._trainer, weight_decay=t.weight_decay)

    def disc_factor(self) -> float:
        """The adversarial factor this step: ``loss.disc_start`` and its ramp, and under seed 000's chunk schedule
        (``data.gan_epochs_per_chunk``) zero unless the whole batch comes from a chunk's GAN passes."""
        if self.discriminator is None or self._batch_gan is False:
            return 0.0
        c = self.cfg.loss
        return disc_factor(self.global_step, c.disc_start, c.disc_ramp_steps, c.disc_weight_max)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Count skipped (unreadable) items on the host, before the batch moves to the device: no sync later.
        if isinstance(batch, dict) and "skipped" in batch:
            self.counters["skipped_data"] += int(batch.pop("skipped"))
        if isinstance(batch, dict) and "gan" in batch:  # seed 000's chunk schedule (data.gan_epochs_per_chunk)
            self._batch_gan = bool(batch.pop("gan").all())
            batch.pop("chunk_pass", None)
        return batch

    def compute_gradients(
        self, x: torch.Tensor, mask: torch.Tensor | None, factor: float, backward: Backward | None = None,
        grad_scale: float = 1.0,
    ) -> StepGradients:
        """Forward passes, both losses and clipped gradients of one step (no optimizer step). ``backward``
        (default: plain) may scale the gradients by ``grad_scale``, which the clipping and the norms undo."""
        t = self.cfg.train
        backward = backward or torch.autograd.backward
        gen_params = self.generator_parameters()
        disc = self.discriminator if factor > 0 else None
        out, g = generator_forward_backward(self.model, self.loss_fn, disc, x, mask, factor, gen_params, backward)
        g_norm = _clip(gen_params, t.grad_clip, grad_scale)
        d, d_norm = None, torch.zeros((), device=x.device)
        if disc is not None:
            d_params = self.discriminator_parameters()
            d = discriminator_forward_backward(self.loss_fn, disc, x, out.reconstruction, factor, d_params, backward)
            d_norm = _clip(d_params, t.grad_clip, grad_scale)
        return StepGradients(out, g, d, g_norm, d_norm)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if "image" not in batch:  # every item of the batch was unreadable
            return None
        x, mask = batch["image"], batch.get("mask")
        if self.cfg.train.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        opt = self.optimizers()
        factor = self.disc_factor()
        # A skipped step leaves no trace in what the forward rewrites (EMA codebooks, restarts, BatchNorm).
        saved = _forward_state(self.model, self.discriminator)
        opt.zero_grad(set_to_none=True)
        # 16-mixed's loss scale: gradients are unscaled only in optimizer.step(), so clipping allows for it.
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        scale = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0
        step = self.compute_gradients(x, mask, factor, backward=self.manual_backward, grad_scale=scale)
        g = step.g
        # One host sync per step: are the losses and gradients finite? Skip the update of a network that isn't.
        finite = [torch.isfinite(g.loss) & torch.isfinite(step.g_norm), torch.isfinite(step.d_norm)]
        finite = torch.stack(finite).tolist()
        if scale != 1.0 and bool(torch.isfinite(g.loss)) and not all(finite):
            # A loss-scale overflow: the gradient scaler skips this optimizer step and lowers its scale itself (the
            # gradients stay as they are so that it sees them); only the forward pass's in-place state is undone.
            _restore(saved[0] + saved[1])
            finite = [True, True]
        nets = {"generator": self.generator_parameters(), "discriminator": self.discriminator_parameters()}
        for ok, (name, params), state in zip(finite, nets.items(), saved, strict=True):
            if not ok:
                for p in params:
                    p.grad = None
                _restore(state)
                self.counters[f"skipped_{name}"] += 1
        skipped = " and ".join(n for n, ok in zip(nets, finite, strict=True) if not ok)
        track_nonfinite(self, all(finite), f"{skipped} skipped", "loss or gradient",
                        "Lower train.lr, set train.grad_clip, or raise train.max_nonfinite_steps.")
        opt.step()
        self.lr_schedulers().step()

        # Python numbers, not new CPU tensors: Lightning would copy each of them to the device every step.
        logs = {**g.logs, **getattr(step.d, "logs", {}), **step.out.stats, "grad_norm_g": step.g_norm,
                "disc_factor": float(factor), **{k: float(v) for k, v in self.counters.items()}}
        logs = {f"train/{k}": v for k, v in logs.items()}
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=x.shape[0])
        self.log("loss", g.logs["total"], prog_bar=True, on_step=True, on_epoch=False, batch_size=x.shape[0], logger=False)

    def on_validation_epoch_start(self) -> None:
        self.val_batch_for_samples = None

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if "image" not in batch:
            return
        x = batch["image"]
        out = self.model(x)
        rec = out.reconstruction
        self.val_rec.update(self.loss_fn.nll(x, rec, batch.get("mask")).logs["rec"])
        self.val_psnr.update(psnr(x, rec))
        self.val_ssim.update(ssim(x, rec))
        self.val_usage.update(out.indices)
        if batch_idx == 0:
            self.val_batch_for_samples = x[:16].detach()

    def on_validation_epoch_end(self) -> None:
        stats = self.val_usage.compute()
        metrics = {"val/psnr": self.val_psnr.compute(), "val/ssim": self.val_ssim.compute(),
                   "val/rec": self.val_rec.compute(), "val/codebook_usage": stats["usage"],
                   "val/perplexity": stats["perplexity"], "val/code_entropy_bits": stats["entropy"]}
        for m in (self.val_psnr, self.val_ssim, self.val_rec, self.val_usage):
            m.reset()
        publish_validation(self, metrics, "val/psnr")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The frozen perceptual network is rebuilt from its own file; don't copy 60 MB into every checkpoint.
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("loss_fn.")}
        checkpoint["vqgan_counters"] = dict(self.counters)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        own = {k: v for k, v in self.state_dict().items() if k.startswith("loss_fn.")}
        checkpoint["state_dict"].update(own)
        self.counters.update(checkpoint.get("vqgan_counters", {}))


def _forward_state(model: torch.nn.Module, discriminator: torch.nn.Module | None) -> tuple[list, list]:
    """``(tensor, copy)`` pairs of the state a training forward pass may rewrite in place: every buffer of the
    autoencoder and of the discriminator, and the quantizer's parameters (EMA codebooks are set, not stepped)."""
    gen = [*model.buffers(), *(p.data for p in model.quantize.parameters())]
    disc = list(discriminator.buffers()) if discriminator is not None else []
    return [(t, t.detach().clone()) for t in gen], [(t, t.detach().clone()) for t in disc]


@torch.no_grad()
def _restore(saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for tensor, copy in saved:
        tensor.copy_(copy)


def _clip(params: list[torch.nn.Parameter], max_norm: float | None, scale: float = 1.0) -> torch.Tensor:
    """Clip the gradients' global norm to ``max_norm`` (if set) and return it (a tensor, no sync). Gradients
    ``scale`` times the true ones (loss scale) are clipped to ``max_norm * scale``, the norm divided back."""
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=params[0].device if params else None)
    if max_norm is None:
        # One multi-tensor (foreach) kernel per device, not one norm kernel per parameter.
        norm = torch.nn.utils.get_total_norm([p.grad for p in grads])
    else:
        limit = max_norm * scale if max_norm > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(grads, limit, error_if_nonfinite=False)
    return norm / scale if scale != 1.0 else norm
