"""A flow prior's latents back to images: unproject (seed 004's option A), optionally snap to the nearest
codes (the decoder's only inputs in training; ``benchmarks/priors.py`` measures both ways), decode."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@torch.no_grad()
def decode_latents(
    tokenizer: nn.Module, latents: torch.Tensor, projection: nn.Module | None = None, snap: bool = False,
    batch_size: int = 64,
) -> torch.Tensor:
    """CPU images in [-1, 1] of latents ``(B, C, h, w)`` in the tokenizer's (or projection's) units, through
    ``projection.unproject`` and the quantizer with ``snap``, ``batch_size`` at a time on its device."""
    device, embed_dim, out = next(tokenizer.parameters()).device, tokenizer.config.embed_dim, []
    hint = "pass the projection the prior was trained through" if projection is None else "wrong projection"
    for i in range(0, latents.shape[0], batch_size):
        z = latents[i : i + batch_size].to(device)
        z = z if projection is None else projection.to(device).unproject(z)
        if z.shape[1] != embed_dim:
            raise ValueError(f"latents of {z.size(1)} channels but the tokenizer decodes {embed_dim}: {hint}")
        if snap:
            was = tokenizer.quantize.training
            z = tokenizer.quantize.eval()(z).quantized
            tokenizer.quantize.train(was)
        out.append(tokenizer.decode(z).clamp(-1, 1).cpu())
    return torch.cat(out)


@torch.no_grad()
def trajectory_images(
    tokenizer: nn.Module, trajectory: list[torch.Tensor], columns: int = 6,
    projection: nn.Module | None = None, snap: bool = False,
) -> torch.Tensor:
    """``columns`` equally spaced decoded states, noise to sample, of every sample's ODE trajectory (from
    ``FlowPrior.generate(return_trajectory=True)``): ``(B * columns, C, H, W)``, a grid row per sample."""
    columns = max(2, min(columns, len(trajectory)))
    idx = torch.linspace(0, len(trajectory) - 1, columns).round().long().tolist()
    images = [decode_latents(tokenizer, trajectory[i], projection, snap) for i in idx]
    return torch.stack(images, 1).flatten(0, 1)


def load_latent_decoder(
    tokenizer: str | Path, projection: str | Path | None = None, map_location: str = "cpu"
) -> tuple[nn.Module, nn.Module | None]:
    """The tokenizer and projection that turn a flow prior's latents into images (the fine-tuned tokenizer
    in the projection folder's ``decoder/``, from ``--train-decoder`` or ``--train-encoder``, if any)."""
    from vqgan import load_model
    from vqgan.interop.projection import load_projection

    proj = None if projection is None else load_projection(projection, map_location)
    if projection is not None and (Path(projection) / "decoder").is_dir():
        tokenizer = Path(projection) / "decoder"
    return load_model(tokenizer, map_location)[0].eval(), proj


@dataclass
class LatentSamples:
    """Result of :func:`sample_latent_images`: ``latents`` ``(B, C, h, w)``, decoded ``images`` in [-1, 1],
    ``seconds`` of ODE integration (not decoding), the decoded ``trajectory`` (:func:`trajectory_images`)."""

    latents: torch.Tensor
    images: torch.Tensor
    seconds: float
    trajectory: torch.Tensor | None = None


@torch.no_grad()
def sample_latent_images(
    prior: nn.Module, tokenizer: nn.Module, num: int | None = None, labels: torch.Tensor | None = None,
    projection: nn.Module | None = None, snap: bool = False, steps: int | None = None,
    sampler: str | None = None, cfg_scale: float | None = None, generator: torch.Generator | None = None,
    trajectory_columns: int = 0,
) -> LatentSamples:
    """Sample a flow prior (see :meth:`FlowPrior.generate`) and decode the samples; with
    ``trajectory_columns``, also the decoded ODE trajectory of every sample."""
    start = time.perf_counter()
    out = prior.generate(num=num, labels=labels, steps=steps, sampler=sampler, cfg_scale=cfg_scale,
                         generator=generator, return_trajectory=trajectory_columns > 0)
    seconds = time.perf_counter() - start
    latents, trajectory = out if trajectory_columns > 0 else (out, None)
    images = decode_latents(tokenizer, latents, projection, snap)
    if trajectory is not None:
        trajectory = trajectory_images(tokenizer, trajectory, trajectory_columns, projection, snap)
    return LatentSamples(latents.cpu(), images, seconds, trajectory)
