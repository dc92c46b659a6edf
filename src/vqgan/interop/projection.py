"""A learned projection of a tokenizer's latents ``(B, D, h, w) -> (B, N, h, w)`` for downstream models that
expect ``N`` channels (seed 004's "option A"), fitted after stage 1 through the decoder ``D``::

    loss = || D(up(down(z))) - x ||^2  +  latent_weight * || up(down(z)) - z ||^2

with ``z`` the quantized (or continuous) latents of images ``x``; ``down`` and ``up`` start from the principal
components of ``z``, and the image term then spends the ``N`` channels on what the decoder needs.

Saved files (:func:`save_projection`): ``projection.json`` (the :class:`ProjectionConfig` fields and ``fit``,
the summary of :func:`fit_projection`); ``projection.safetensors`` with ``down.weight (N, D, k, k)``,
``down.bias (N,)``, ``up.weight (D, N, k, k)``, ``up.bias (D,)`` and ``mean``, ``std`` ``(N,)``: per-channel
statistics of the projected training latents, ``normalize(p) = (p - mean) / std`` for the flow model; and,
after ``train_decoder`` or ``train_encoder``, ``decoder/``: the tokenizer with its fine-tuned decoder, in our
folder format.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from vqgan.interop.common import ConversionError
from vqgan.metrics.reconstruction import psnr
from vqgan.models.pretrained import save_pretrained

PROJECTION_CONFIG = "projection.json"
PROJECTION_WEIGHTS = "projection.safetensors"


@dataclass
class ProjectionConfig:
    """Shape of a :class:`LatentProjection`.

    Attributes:
        in_channels: channels of the tokenizer's latents (``embed_dim``).
        out_channels: channels the downstream model expects (``N``).
        kernel_size: 1 (a per-position linear map) or an odd size (a conv that also mixes neighbours).
        source: the latents it reads: ``quantized`` codes or ``continuous`` encoder outputs.
    """

    in_channels: int
    out_channels: int = 4
    kernel_size: int = 1
    source: Literal["quantized", "continuous"] = "quantized"


class LatentProjection(nn.Module):
    """``down: D -> N`` and ``up: N -> D`` convolutions, with per-channel statistics of the projected latents."""

    def __init__(self, config: ProjectionConfig):
        super().__init__()
        if config.kernel_size % 2 != 1:
            raise ValueError(f"kernel_size={config.kernel_size} must be odd")
        if config.source not in ("quantized", "continuous"):
            raise ValueError(f"source={config.source!r}: choose 'quantized' or 'continuous'")
        self.config = config
        d, n, k = config.in_channels, config.out_channels, config.kernel_size
        self.down = nn.Conv2d(d, n, k, padding=k // 2)
        self.up = nn.Conv2d(n, d, k, padding=k // 2)
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))

    def project(self, latents: torch.Tensor) -> torch.Tensor:
        """``(B, D, h, w) -> (B, N, h, w)``."""
        return self.down(latents)

    def unproject(self, projected: torch.Tensor) -> torch.Tensor:
        """``(B, N, h, w) -> (B, D, h, w)``, ready for ``tokenizer.decode``."""
        return self.up(projected)

    def normalize(self, projected: torch.Tensor) -> torch.Tensor:
        """Zero-mean, unit-variance channels (statistics of the fit data)."""
        return (projected - self.mean[:, None, None]) / self.std[:, None, None]

    def denormalize(self, normalized: torch.Tensor) -> torch.Tensor:
        return normalized * self.std[:, None, None] + self.mean[:, None, None]

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.unproject(self.project(latents))

    @torch.no_grad()
    def init_pca(self, latents: torch.Tensor) -> None:
        """Start at the top-``N`` principal components of ``latents`` (centre tap only for ``kernel_size > 1``):
        the best linear reconstruction of the latents through ``N`` channels."""
        d, n = self.config.in_channels, self.config.out_channels
        flat = latents.permute(0, 2, 3, 1).reshape(-1, d).double()
        mu = flat.mean(0)
        _, _, vh = torch.linalg.svd(flat - mu, full_matrices=False)
        v = vh[: min(n, vh.shape[0])].T  # (D, n')
        if v.shape[1] < n:  # fewer samples or dims than N: pad with orthogonal random directions
            extra = torch.linalg.qr(torch.randn(d, n, dtype=torch.float64))[0][:, v.shape[1] :]
            v = torch.cat([v, extra], 1)
        c = self.config.kernel_size // 2
        for conv, weight, bias in ((self.down, v.T, -(v.T @ mu)), (self.up, v, mu)):
            conv.weight.zero_()
            conv.weight[:, :, c, c] = weight.float()
            conv.bias.copy_(bias.float())


def source_latents(model: nn.Module, images: torch.Tensor, source: str) -> torch.Tensor:
    """The tokenizer latents a projection reads: ``quantized`` codes or ``continuous`` encoder outputs."""
    enc = model.encode(images)
    return enc.quantized if source == "quantized" else enc.latents


def projection_loss(
    model: nn.Module, projection: LatentProjection, images: torch.Tensor, latent_weight: float = 0.1,
    train_encoder: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Reconstruction through the projection and the decoder, plus a latent reconstruction term: images in,
    ``(loss, logs)`` out. The tokenizer's encoder runs without gradients unless ``train_encoder``."""
    with torch.set_grad_enabled(train_encoder and torch.is_grad_enabled()):
        z = source_latents(model, images, projection.config.source)
    z_hat = projection(z)
    rec = F.mse_loss(model.decode(z_hat), images)
    lat = F.mse_loss(z_hat, z)
    return rec + latent_weight * lat, {"rec_mse": rec.detach(), "latent_mse": lat.detach()}


@dataclass
class ProjectionFit:
    """Result of :func:`fit_projection`: the projection, the loss per step and summary figures."""

    projection: LatentProjection
    history: list[float] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def _images(batch: Any) -> torch.Tensor:
    if isinstance(batch, dict):
        return batch["image"]
    return batch[0] if isinstance(batch, (list, tuple)) else batch


def _cycle(batches: Iterable[Any]) -> Iterator[torch.Tensor]:
    while True:
        empty = True
        for b in batches:
            empty = False
            yield _images(b)
        if empty:
            raise ValueError("fit_projection: no batches")


def channel_statistics(batches: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-channel mean and (unbiased) standard deviation of ``(B, C, *spatial)`` tensors over every batch, in
    one streamed pass of float64 sums of ``x`` and ``x^2``. Returns ``(mean, std, n)``, ``n`` positions."""
    total = total_sq = n = 0
    for x in batches:
        flat = x.detach().movedim(1, -1).reshape(-1, x.shape[1]).double()
        total = total + flat.sum(0)
        total_sq = total_sq + flat.pow(2).sum(0)
        n += flat.shape[0]
    if n < 2:
        raise ValueError(f"channel_statistics needs at least 2 positions, got {n}")
    mean = total / n
    var = (total_sq - n * mean.pow(2)).clamp_min(0.0) / (n - 1)
    return mean.float(), var.sqrt().float(), n


def fit_projection(
    model: nn.Module, batches: Iterable[Any], out_channels: int = 4, steps: int = 500, lr: float = 1e-3,
    kernel_size: int = 1, source: Literal["quantized", "continuous"] = "quantized",
    latent_weight: float = 0.1, train_decoder: bool = False, device: str = "cpu", seed: int = 0,
    eval_images: torch.Tensor | None = None, train_encoder: bool = False,
) -> ProjectionFit:
    """Fit a :class:`LatentProjection` to a tokenizer in ``steps`` Adam steps (objective: module docstring).

    Args:
        model: the tokenizer; frozen except what ``train_*`` names.
        batches: image batches in [-1, 1] (tensors, ``(images, ...)`` tuples or dicts with ``image``), e.g. a
            DataLoader; cycled until ``steps``.
        out_channels, kernel_size, source: see :class:`ProjectionConfig`.
        train_decoder: train the decoder (and ``post_quant_conv``) jointly with the projection.
        train_encoder: also train the encoder (and ``quant_conv``; seed 004's "projection layer in the encoder
            output"); the codebook stays fixed, ``quantized`` latents pass gradients straight through.
        eval_images: held-out images for the summary figures (default: the first training batch).
    """
    torch.manual_seed(seed)
    model = model.to(device).eval().requires_grad_(False)
    trained = [model.decoder, model.post_quant_conv] if train_decoder else []
    trained += [model.encoder, model.quant_conv] if train_encoder else []
    params_model = [p.requires_grad_(True) for mod in trained for p in mod.parameters()]
    config = ProjectionConfig(model.config.embed_dim, out_channels, kernel_size, source)
    proj = LatentProjection(config).to(device)
    it = _cycle(batches)
    first = next(it).to(device)
    held_out = first if eval_images is None else _images(eval_images).to(device)
    with torch.no_grad():
        proj.init_pca(source_latents(model, first, source))
        initial, _ = projection_loss(model, proj, held_out, latent_weight)
    opt = torch.optim.Adam([*proj.parameters(), *params_model], lr=lr)
    history: list[float] = []
    for images in islice(chain([first], it), steps):
        loss, _ = projection_loss(model, proj, images.to(device), latent_weight, train_encoder)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    model.requires_grad_(False).eval()
    proj.eval()
    with torch.no_grad():
        final, logs = projection_loss(model, proj, held_out, latent_weight)
        # Statistics of the projected latents of the whole training set (one more pass), for normalisation.
        projected = (proj.project(source_latents(model, _images(b).to(device), source)) for b in batches)
        mean, std, count = channel_statistics(projected)
        proj.mean.copy_(mean)
        proj.std.copy_(std.clamp_min(1e-6))
        z = source_latents(model, held_out, source)
        summary = dict(
            steps=steps, lr=lr, latent_weight=latent_weight, train_decoder=train_decoder,
            train_encoder=train_encoder, initial_loss=float(initial), final_loss=float(final),
            evaluated_on="first training batch" if eval_images is None else "held-out images",
            # Mean of per-image PSNRs, as every other PSNR this package reports.
            psnr_tokenizer=float(psnr(model.decode(z), held_out).mean()),
            psnr_through_projection=float(psnr(model.decode(proj(z)), held_out).mean()),
            latent_mse=float(logs["latent_mse"]), statistics_positions=count,
        )
    return ProjectionFit(proj, history, summary)


def save_projection(
    projection: LatentProjection, directory: str | Path, summary: dict[str, Any] | None = None,
    model: nn.Module | None = None,
) -> Path:
    """Write the folder the module docstring describes (``decoder/``: ``model``, when given)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {**asdict(projection.config), "fit": summary or {}}
    (directory / PROJECTION_CONFIG).write_text(json.dumps(meta, indent=2))
    state = {k: v.detach().contiguous().cpu() for k, v in projection.state_dict().items()}
    save_file(state, str(directory / PROJECTION_WEIGHTS), metadata={"library": "vqgan", "kind": "latent-projection"})
    if model is not None:
        save_pretrained(model, directory / "decoder")
    return directory


def load_projection(directory: str | Path, map_location: str = "cpu") -> LatentProjection:
    """Read a folder written by :func:`save_projection` (JSON + safetensors; no code is executed)."""
    directory = Path(directory)
    cfg_path, weights = directory / PROJECTION_CONFIG, directory / PROJECTION_WEIGHTS
    for p in (cfg_path, weights):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: a projection folder holds {PROJECTION_CONFIG} and {PROJECTION_WEIGHTS}")
    meta = {k: v for k, v in json.loads(cfg_path.read_text()).items() if k != "fit"}
    try:
        config = ProjectionConfig(**meta)
    except TypeError as e:
        raise ConversionError(f"{cfg_path}: {e}") from None
    proj = LatentProjection(config)
    proj.load_state_dict(load_file(str(weights), device=map_location), strict=True)
    return proj.eval()
