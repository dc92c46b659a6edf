"""Metrics: reconstruction (PSNR, SSIM), codebook statistics."""

from vqgan.metrics.codebook import CodebookUsage, codebook_stats
from vqgan.metrics.reconstruction import psnr, ssim, to_unit

__all__ = ["CodebookUsage", "codebook_stats", "psnr", "ssim", "to_unit"]
