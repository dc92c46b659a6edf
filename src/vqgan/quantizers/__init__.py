"""Quantizers behind one interface (:class:`Quantizer`, :class:`QuantizerOutput`) and a factory from config.

=========  =======================================================================================
kind       quantizer
=========  =======================================================================================
``vq``     :class:`VectorQuantizer`, codebook learned by gradients (van den Oord et al. 2017)
``ema``    :class:`VectorQuantizer`, codebook learned by exponential moving averages
``fsq``    :class:`FSQ`, finite scalar quantization (Mentzer et al. 2023)
``lfq``    :class:`LFQ`, lookup-free quantization with MAGVIT-v2's entropy terms
``simvq``  :class:`SimVQ`, frozen codebook with a learned linear map (Zhu et al. 2024)
``residual`` :class:`ResidualQuantizer`, ``num_stages`` stages of ``stage_kind``
=========  =======================================================================================
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

_BUILDERS: dict[str, Callable[[QuantizerConfig, int], Quantizer]] = {}


def register_quantizer(kind: str) -> Callable:
    """Register a builder ``(config, dim) -> Quantizer`` for ``QuantizerConfig.kind == kind``."""

    def wrap(fn: Callable[[QuantizerConfig, int], Quantizer]) -> Callable[[QuantizerConfig, int], Quantizer]:
        _BUILDERS[kind] = fn
        return fn

    return wrap


def _vq_kwargs(cfg: QuantizerConfig) -> dict:
    return dict(
        codebook_size=cfg.codebook_size,
        codebook_dim=cfg.codebook_dim,
        beta=cfg.beta,
        beta_on=cfg.beta_on,
        decay=cfg.decay,
        l2_normalize=cfg.l2_normalize,
        kmeans_init=cfg.kmeans_init,
        kmeans_iters=cfg.kmeans_iters,
        dead_code_threshold=cfg.dead_code_threshold,
        usage_decay=cfg.usage_decay,
        entropy_weight=cfg.entropy_weight,
        entropy_temperature=cfg.entropy_temperature,
        search_chunk_size=cfg.search_chunk_size,
    )


@register_quantizer("vq")
def _build_vq(cfg: QuantizerConfig, dim: int) -> Quantizer:
    return VectorQuantizer(dim, ema=False, **_vq_kwargs(cfg))


@register_quantizer("ema")
def _build_ema(cfg: QuantizerConfig, dim: int) -> Quantizer:
    return VectorQuantizer(dim, ema=True, **_vq_kwargs(cfg))


def _commitment_only(cfg: QuantizerConfig) -> None:
    """Quantizers without a codebook loss term refuse ``beta_on="codebook"`` instead of ignoring it."""
    if cfg.beta_on != "commitment":
        raise ValueError(
            f"quantizer kind {cfg.kind!r} has no codebook loss term for beta to weight; beta_on='codebook' needs "
            "kind vq or simvq"
        )


@register_quantizer("fsq")
def _build_fsq(cfg: QuantizerConfig, dim: int) -> Quantizer:
    _commitment_only(cfg)
    return FSQ(dim, list(cfg.levels), usage_decay=cfg.usage_decay)


@register_quantizer("lfq")
def _build_lfq(cfg: QuantizerConfig, dim: int) -> Quantizer:
    _commitment_only(cfg)
    return LFQ(
        dim,
        cfg.codebook_size,
        beta=cfg.beta,
        sample_entropy_weight=cfg.lfq_sample_entropy_weight,
        codebook_entropy_weight=cfg.lfq_codebook_entropy_weight,
        temperature=cfg.entropy_temperature,
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
    if cfg.stage_kind not in _BUILDERS or cfg.stage_kind == "residual":
        raise ValueError(f"residual stage_kind {cfg.stage_kind!r} must be one of {sorted(set(_BUILDERS) - {'residual'})}")
    stage_cfg = dataclasses.replace(cfg, kind=cfg.stage_kind)
    return ResidualQuantizer([_BUILDERS[cfg.stage_kind](stage_cfg, dim) for _ in range(cfg.num_stages)])


def build_quantizer(cfg: QuantizerConfig, dim: int) -> Quantizer:
    """Build the quantizer named by ``cfg.kind`` for latents with ``dim`` channels."""
    if cfg.kind not in _BUILDERS:
        raise ValueError(f"quantizer kind {cfg.kind!r} is not available; choose one of {sorted(_BUILDERS)}")
    return _BUILDERS[cfg.kind](cfg, dim)


def available_quantizers() -> list[str]:
    return sorted(_BUILDERS)


__all__ = [
    "FSQ",
    "LFQ",
    "Quantizer",
    "QuantizerOutput",
    "ResidualQuantizer",
    "SimVQ",
    "VectorQuantizer",
    "available_quantizers",
    "build_quantizer",
    "kmeans",
    "nearest_code",
    "register_quantizer",
]
