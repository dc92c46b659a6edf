"""PSNR and SSIM of images in [-1, 1] (torchmetrics', data range 1 after mapping to [0, 1]); conversions."""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import rearrange
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> uint8, rounded to nearest: the one float-to-8-bit conversion (PNGs, videos, FID's input). Not
    torchvision's ``to_dtype(..., scale=True)``, which truncates: PSNR of written files assumes rounding."""
    return (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)


def frames(x: torch.Tensor) -> torch.Tensor:
    """Videos ``(B, C, T, H, W)`` -> their frames as images ``(B * T, C, H, W)``."""
    return rearrange(x, "b c t h w -> (b t) c h w")


def per_clip(score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """An image score ``(N,)`` of videos ``(B, C, T, H, W)``: every frame scored, averaged per clip ``(B,)``."""
    return score(frames(x), frames(y)).view(x.shape[0], -1).mean(1)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR per image (``(B,)``, dB) between images in [-1, 1] (clamped, compared in [0, 1])."""
    a, b = to_unit(x), to_unit(y)
    return peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=tuple(range(1, a.dim())))


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM per image (``(B,)``) between images in [-1, 1], Gaussian window 11, sigma 1.5 (Wang et al. 2004).
    Videos ``(B, C, T, H, W)`` are scored per frame and averaged."""
    if x.dim() == 5:
        return per_clip(ssim, x, y)
    a, b = to_unit(x), to_unit(y)
    return structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")
