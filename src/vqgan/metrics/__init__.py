"""Metrics: reconstruction (PSNR, SSIM, LPIPS, rFID), codebook statistics, set distances without downloads, whole-set evaluation with its protocol."""

from vqgan.metrics.codebook import CodebookUsage, codebook_stats
from vqgan.metrics.distribution import clip_set_distances, image_set_distances, sliced_wasserstein
from vqgan.metrics.evaluate import EvaluationResult, evaluate_tokenizer, reconstruction_metrics
from vqgan.metrics.fid import ReconstructionFID, frechet_distance
from vqgan.metrics.lpips import LPIPSMetric
from vqgan.metrics.reconstruction import psnr, ssim, to_unit

__all__ = [
    "CodebookUsage", "EvaluationResult", "LPIPSMetric", "ReconstructionFID", "clip_set_distances",
    "codebook_stats", "evaluate_tokenizer", "frechet_distance", "image_set_distances", "psnr",
    "reconstruction_metrics", "sliced_wasserstein", "ssim", "to_unit",
]
