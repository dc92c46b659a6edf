"""Quantizers behind one interface (:class:`Quantizer`, :class:`QuantizerOutput`) and a factory from config.

``vq`` and ``ema``: :class:`VectorQuantizer` with a codebook learned by gradients or by moving averages (van
den Oord et al. 2017); ``fsq``: :class:`FSQ` (Mentzer et al. 2023); ``lfq``: :class:`LFQ` (MAGVIT-v2);
``simvq``: :class:`SimVQ` (Zhu et al. 2024); ``residual``: :class:`ResidualQuantizer` (``num_stages`` of
``stage_kind``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from vqgan.config import QuantizerConfig
from vqgan.quantizers.base import Quantizer, QuantizerOutput
from vqgan.quantizers.fsq import FSQ
from vqgan.quantizers.lfq import LFQ
from vqgan.quantizers.residual import ResidualQuantizer
from vqgan.quantizers.simvq import SimVQ
from vqgan.quantizers.vq import VectorQuantizer, kmeans, nearest_code
from vqgan.registry import Registry

#: ``QuantizerConfig.kind`` -> builder ``(config, dim) -> Quantizer``.
QUANTIZERS: Registry[Callable[[QuantizerConfig, int], Quantizer]] = Registry("quantizer kind")


def register_quantizer(kind: str, description: str = "") -> Callable:
    """Register a builder ``(config, dim) -> Quantizer`` for ``QuantizerConfig.kind == kind``."""
    return QUANTIZERS.register(kind, description)


_VQ_FIELDS = (
    "codebook_size codebook_dim beta beta_on decay l2_normalize kmeans_init kmeans_iters dead_code_threshold "
    "usage_decay entropy_weight entropy_temperature search_chunk_size"
).split()


@register_quantizer("vq")
def _build_vq(cfg: QuantizerConfig, dim: int, ema: bool = False) -> Quantizer:
    return VectorQuantizer(dim, ema=ema, **{f: getattr(cfg, f) for f in _VQ_FIELDS})


@register_quantizer("ema")
def _build_ema(cfg: QuantizerConfig, dim: int) -> Quantizer:
    return _build_vq(cfg, dim, ema=True)


@register_quantizer("fsq")
def _build_fsq(cfg: QuantizerConfig, dim: int) -> Quantizer:
    return FSQ(dim, list(cfg.levels), usage_decay=cfg.usage_decay)


@register_quantizer("lfq")
def _build_lfq(cfg: QuantizerConfig, dim: int) -> Quantizer:
    return LFQ(
        dim, cfg.codebook_size, beta=cfg.beta, sample_entropy_weight=cfg.lfq_sample_entropy_weight,
        codebook_entropy_weight=cfg.lfq_codebook_entropy_weight, temperature=cfg.entropy_temperature,
        usage_decay=cfg.usage_decay,
    )


@register_quantizer("simvq")
def _build_simvq(cfg: QuantizerConfig, dim: int) -> Quantizer:
    return SimVQ(
        dim, cfg.codebook_size, beta=cfg.beta, search_chunk_size=cfg.search_chunk_size, usage_decay=cfg.usage_decay,
        beta_on=cfg.beta_on,
    )


@register_quantizer("residual")
def _build_residual(cfg: QuantizerConfig, dim: int) -> Quantizer:
    if cfg.stage_kind not in QUANTIZERS or cfg.stage_kind == "residual":
        stages = sorted(set(QUANTIZERS) - {"residual"})
        raise ValueError(f"residual stage_kind {cfg.stage_kind!r} must be one of {stages}")
    return ResidualQuantizer([build_quantizer(dataclasses.replace(cfg, kind=cfg.stage_kind), dim)
                              for _ in range(cfg.num_stages)])


def build_quantizer(cfg: QuantizerConfig, dim: int) -> Quantizer:
    """Build the quantizer named by ``cfg.kind`` for latents with ``dim`` channels."""
    if cfg.kind in ("fsq", "lfq") and cfg.beta_on != "commitment":  # refused rather than ignored
        raise ValueError(
            f"quantizer kind {cfg.kind!r} has no codebook loss term for beta to weight; beta_on='codebook' "
            "needs kind vq or simvq"
        )
    return QUANTIZERS[cfg.kind](cfg, dim)


def available_quantizers() -> list[str]:
    return QUANTIZERS.names()


__all__ = [
    "FSQ", "LFQ", "QUANTIZERS", "Quantizer", "QuantizerOutput", "ResidualQuantizer", "SimVQ",
    "VectorQuantizer", "available_quantizers", "build_quantizer", "kmeans", "nearest_code",
    "register_quantizer",
]
