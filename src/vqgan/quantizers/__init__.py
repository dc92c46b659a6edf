"""Quantizers behind one interface (:class:`Quantizer`, :class:`QuantizerOutput`) and a factory from config."""

from __future__ import annotations

from collections.abc import Callable

from vqgan.config import QuantizerConfig
from vqgan.quantizers.base import Quantizer, QuantizerOutput
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


def build_quantizer(cfg: QuantizerConfig, dim: int) -> Quantizer:
    """Build the quantizer named by ``cfg.kind`` for latents with ``dim`` channels."""
    if cfg.kind not in _BUILDERS:
        raise ValueError(f"quantizer kind {cfg.kind!r} is not available; choose one of {sorted(_BUILDERS)}")
    return _BUILDERS[cfg.kind](cfg, dim)


def available_quantizers() -> list[str]:
    return sorted(_BUILDERS)


__all__ = [
    "Quantizer",
    "QuantizerOutput",
    "VectorQuantizer",
    "available_quantizers",
    "build_quantizer",
    "kmeans",
    "nearest_code",
    "register_quantizer",
]
