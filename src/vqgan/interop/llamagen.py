"""Load LlamaGen image tokenizers (Sun et al. 2024, https://arxiv.org/abs/2406.06525), e.g. ``vq_ds16_c2i``:
taming's architecture under other names (:data:`NAMES`; decoder levels deepest first), attention on every
block of the deepest level, codes l2-normalised in the 8-dimensional ``quant_conv`` space (our
``l2_normalize=True``, ``embed_dim=8``; the flag is from the checkpoint's ``args``, else ``l2_normalize``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from vqgan.interop.common import (
    ConversionError,
    StandIn,
    build_model,
    infer_taming_config,
    rename_pieces,
    safe_torch_load,
    tensors_only,
)

# (LlamaGen, ours) dotted name pieces; the names both share are not listed.
NAMES = [
    ("encoder.conv_blocks", "encoder.down"), ("decoder.conv_blocks", "decoder.up"), ("res", "block"),
    ("mid.0", "mid.block_1"), ("mid.1", "mid.attn_1"), ("mid.2", "mid.block_2"),
]


def llamagen_state_dict(ckpt: Any, source: str, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The tokenizer weights of a loaded LlamaGen checkpoint, with our key names."""
    if not isinstance(ckpt, dict):
        raise ConversionError(f"{source}: expected a dict with a 'model' entry")
    if use_ema and not isinstance(ckpt.get("ema"), dict):
        raise ConversionError(f"{source}: no 'ema' weights in this checkpoint (entries: {sorted(ckpt)})")
    found = [ckpt[k] for k in ("ema" if use_ema else "model", "state_dict") if isinstance(ckpt.get(k), dict)]
    state = tensors_only(found[0] if found else ckpt, prefixes=("module.", "_orig_mod."))
    levels = {int(m[1]) for k in state if (m := re.match(r"encoder\.conv_blocks\.(\d+)\.", k))}
    if not levels:
        raise ConversionError(f"{source}: not a LlamaGen tokenizer, no encoder.conv_blocks.* weights "
                              f"(entries: {sorted(ckpt)[:10]})")
    state.pop("quantize.codebook_used", None)  # LlamaGen's usage history
    return {rename_pieces(k, NAMES, max(levels) + 1): v for k, v in state.items()}


def load_llamagen(
    path: str | Path, l2_normalize: bool | None = None, use_ema: bool = False, allow_stand_ins: bool = False,
    resolution: int = 256, checkpoint: dict[str, Any] | None = None,
) -> torch.nn.Module:
    """Convert a LlamaGen tokenizer checkpoint into our :class:`~vqgan.models.VQModel` (eval mode).
    ``l2_normalize``: cosine code lookup (``None``: the checkpoint's ``args``, else ``True``); ``use_ema``:
    the ``ema`` weights; ``resolution``: training image size (places attention; 256 for the releases)."""
    path = Path(path)
    ckpt = safe_torch_load(path, allow_stand_ins) if checkpoint is None else checkpoint
    state = llamagen_state_dict(ckpt, str(path), use_ema)
    if l2_normalize is None:  # the training option, from the args pickled as an argparse.Namespace
        args = ckpt.get("args")
        args = getattr(args, "state", None) if isinstance(args, StandIn) else args
        flag = args.get("codebook_l2_norm") if isinstance(args, dict) else None
        l2_normalize = True if flag is None else bool(flag)
    cfg = infer_taming_config(state, resolution, l2_normalize=l2_normalize, source=str(path))
    if cfg.attn_resolutions not in ([], [resolution // 2 ** (len(cfg.ch_mult) - 1)]):
        raise ConversionError(f"{path}: attention outside the deepest level is not LlamaGen's architecture")
    return build_model(cfg, state, str(path))
