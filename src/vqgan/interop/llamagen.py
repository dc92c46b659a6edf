"""Load LlamaGen image tokenizers (Sun et al. 2024, "Autoregressive Model Beats Diffusion: Llama for Scalable
Image Generation", https://arxiv.org/abs/2406.06525), e.g. ``vq_ds16_c2i.pt`` / ``vq_ds8_c2i.pt``.

A LlamaGen checkpoint is a ``.pt`` dict with the tokenizer under ``model`` (and, from its training script,
``ema``, optimizer states and ``args``). Its ``tokenizer/tokenizer_image/vq_model.py`` is taming's architecture
with other module names:

====================================================  =========================================
LlamaGen                                              ours
====================================================  =========================================
``encoder.conv_blocks.{i}.res.{j}`` / ``.attn.{j}``   ``encoder.down.{i}.block.{j}`` / ``.attn.{j}``
``encoder.conv_blocks.{i}.downsample.conv``           ``encoder.down.{i}.downsample.conv``
``{encoder,decoder}.mid.{0,1,2}``                     ``mid.block_1``, ``mid.attn_1``, ``mid.block_2``
``decoder.conv_blocks.{j}`` (deepest level first)     ``decoder.up.{n-1-j}`` (encoder order, as taming)
``quantize.codebook_used`` (usage history)            dropped
====================================================  =========================================

Attention sits on every block of the deepest level only; GroupNorm has 32 groups; the codebook lives in the
``codebook_embed_dim = 8`` space that ``quant_conv`` maps to, and with ``codebook_l2_norm=True`` (every released
model) latents and codes are l2-normalised before the nearest-neighbour search and the normalised code is
returned. That is exactly our :class:`~vqgan.quantizers.VectorQuantizer` with ``l2_normalize=True`` and
``embed_dim=8`` (no separate ``codebook_dim``). The l2 flag is not visible in the weights: it is read from the
checkpoint's ``args`` when present, else taken from ``l2_normalize`` (default ``True``, LlamaGen's default).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

from vqgan.interop.common import (
    ConversionError,
    StandIn,
    build_model,
    infer_taming_config,
    rename_keys,
    safe_torch_load,
    tensors_only,
)

log = logging.getLogger(__name__)

_MID = {"0": "block_1", "1": "attn_1", "2": "block_2"}


def _renamer(num_levels: int):
    def rename(key: str) -> str | None:
        if key == "quantize.codebook_used":
            return None
        m = re.fullmatch(r"(encoder|decoder)\.conv_blocks\.(\d+)\.(res|attn|downsample|upsample)\.(.*)", key)
        if m:
            part, level, kind, rest = m.groups()
            level = int(level)
            if part == "decoder":
                level = num_levels - 1 - level
            name = {"res": "block", "attn": "attn", "downsample": "downsample", "upsample": "upsample"}[kind]
            return f"{part}.{'down' if part == 'encoder' else 'up'}.{level}.{name}.{rest}"
        m = re.fullmatch(r"(encoder|decoder)\.mid\.([012])\.(.*)", key)
        if m:
            return f"{m.group(1)}.mid.{_MID[m.group(2)]}.{m.group(3)}"
        if re.fullmatch(
            r"(encoder|decoder)\.(conv_in|norm_out|conv_out)\.(weight|bias)|(quant_conv|post_quant_conv)\.(weight|bias)"
            r"|quantize\.embedding\.weight",
            key,
        ):
            return key
        raise KeyError(key)

    return rename


def _args_flag(ckpt: dict[str, Any], name: str) -> Any:
    """A training option from the checkpoint's ``args`` (an ``argparse.Namespace``, read as a stand-in or dict)."""
    args = ckpt.get("args")
    if isinstance(args, StandIn):
        args = getattr(args, "state", None)
    if isinstance(args, dict):
        return args.get(name)
    return None


def llamagen_state_dict(ckpt: Any, source: str, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The tokenizer weights of a loaded LlamaGen checkpoint, with our key names."""
    if not isinstance(ckpt, dict):
        raise ConversionError(f"{source}: expected a dict with a 'model' entry")
    key = "ema" if use_ema else "model"
    if key in ckpt and isinstance(ckpt[key], dict):
        state = ckpt[key]
    elif use_ema:
        raise ConversionError(f"{source}: no 'ema' weights in this checkpoint (entries: {sorted(ckpt)})")
    elif "state_dict" in ckpt and isinstance(ckpt["state_dict"], dict):
        state = ckpt["state_dict"]
    elif any(k.startswith("encoder.conv_blocks.") for k in ckpt):
        state = ckpt
    else:
        raise ConversionError(f"{source}: no LlamaGen tokenizer weights under 'model' (entries: {sorted(ckpt)})")
    state = tensors_only(state)
    # Weights saved from a DDP / torch.compile wrapper carry a prefix.
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    levels = {int(m.group(1)) for k in state for m in [re.match(r"encoder\.conv_blocks\.(\d+)\.", k)] if m}
    if not levels:
        raise ConversionError(f"{source}: no encoder.conv_blocks.* weights: not a LlamaGen tokenizer")
    return rename_keys(state, _renamer(max(levels) + 1), source)


def load_llamagen(
    path: str | Path, l2_normalize: bool | None = None, use_ema: bool = False, allow_stand_ins: bool = False,
    resolution: int = 256, checkpoint: dict[str, Any] | None = None,
) -> torch.nn.Module:
    """Convert a LlamaGen tokenizer checkpoint into our :class:`~vqgan.models.VQModel` (eval mode).

    Args:
        path: the ``.pt`` file.
        l2_normalize: cosine-similarity codebook lookup (``codebook_l2_norm``); ``None`` reads it from the
            checkpoint's ``args`` and defaults to ``True`` as LlamaGen does.
        use_ema: take the ``ema`` weights instead of ``model``.
        allow_stand_ins: read files that pickle ``argparse.Namespace`` etc. with inert placeholders.
        resolution: training image size (only places attention on the deepest level; 256 for the releases).
        checkpoint: the file's contents when already loaded (by :func:`vqgan.interop.load_pretrained`).
    """
    path = Path(path)
    ckpt = safe_torch_load(path, allow_stand_ins) if checkpoint is None else checkpoint
    state = llamagen_state_dict(ckpt, str(path), use_ema)
    if l2_normalize is None:
        flag = _args_flag(ckpt, "codebook_l2_norm") if isinstance(ckpt, dict) else None
        l2_normalize = True if flag is None else bool(flag)
    cfg = infer_taming_config(state, resolution=resolution, num_groups=32, l2_normalize=l2_normalize, source=str(path))
    deepest = len(cfg.ch_mult) - 1
    if cfg.attn_resolutions not in ([], [resolution // 2**deepest]):
        raise ConversionError(f"{path}: attention outside the deepest level is not LlamaGen's architecture")
    return build_model(cfg, state, str(path))
