"""Reconstruction metrics of a tokenizer over a whole dataset."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from vqgan.metrics.codebook import CodebookUsage
from vqgan.metrics.reconstruction import psnr, ssim


@torch.no_grad()
def reconstruction_metrics(model: torch.nn.Module, loader: DataLoader, device: str | torch.device = "cpu") -> dict[str, Any]:
    """PSNR, SSIM (means over images), codebook usage, perplexity and code entropy over every batch of
    ``loader``; also the number of images and skipped (unreadable) items."""
    model = model.to(device).eval()
    usage = CodebookUsage(model.quantize.codebook_size).to(device)
    p_sum = s_sum = 0.0
    n = skipped = 0
    for batch in loader:
        skipped += int(batch.pop("skipped", 0))
        if "image" not in batch:
            continue
        x = batch["image"].to(device)
        out = model(x)
        p_sum += float(psnr(x, out.reconstruction).sum())
        s_sum += float(ssim(x, out.reconstruction).sum())
        usage.update(out.indices)
        n += x.shape[0]
    if n == 0:
        raise ValueError("no readable images to evaluate")
    stats = usage.compute()
    return {
        "psnr": p_sum / n,
        "ssim": s_sum / n,
        "codebook_usage": float(stats["usage"]),
        "perplexity": float(stats["perplexity"]),
        "code_entropy_bits": float(stats["entropy"]),
        "codes_used": int(stats["used"]),
        "codebook_size": model.quantize.codebook_size,
        "num_images": n,
        "skipped": skipped,
    }
