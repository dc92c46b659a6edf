"""Metrics: reconstruction (PSNR, SSIM, LPIPS, rFID), codebook statistics, whole-set evaluation with its protocol."""

from vqgan.metrics.codebook import CodebookUsage, codebook_stats
from vqgan.metrics.evaluate import EvaluationResult, evaluate_tokenizer, reconstruction_metrics
from vqgan.metrics.fid import ReconstructionFID, frechet_distance
from vqgan.metrics.lpips import LPIPSMetric
from vqgan.metrics.reconstruction import psnr, ssim, to_unit

__all__ = [
    "CodebookUsage",
    "EvaluationResult",
    "LPIPSMetric",
    "ReconstructionFID",
    "codebook_stats",
    "evaluate_tokenizer",
    "frechet_distance",
    "psnr",
    "reconstruction_metrics",
    "ssim",
    "to_unit",
]
