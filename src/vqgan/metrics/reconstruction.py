"""Reconstruction metrics on images in [-1, 1]: PSNR and SSIM (torchmetrics' implementations, data range 1
after mapping to [0, 1])."""

from __future__ import annotations

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR per image (``(B,)``, dB) between images in [-1, 1] (clamped, compared in [0, 1])."""
    a, b = to_unit(x), to_unit(y)
    return peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=tuple(range(1, a.dim())))


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM per image (``(B,)``) between images in [-1, 1], Gaussian window 11, sigma 1.5 (Wang et al. 2004).
    Videos ``(B, C, T, H, W)`` are scored per frame and averaged."""
    a, b = to_unit(x), to_unit(y)
    if a.dim() == 5:
        bsz = a.shape[0]
        a, b = (t.transpose(1, 2).flatten(0, 1) for t in (a, b))
        return ssim(a * 2 - 1, b * 2 - 1).view(bsz, -1).mean(1)
    return structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")
