"""Load taming-transformers VQGAN checkpoints (Esser et al. 2021, https://arxiv.org/abs/2012.09841), e.g.
``vqgan_imagenet_f16_1024.ckpt``: the weights use our module names; the architecture is read from the tensors
and checked against the YAML's ``model.params.ddconfig``. Not supported: ``GumbelVQ``, ``remap``,
``double_z``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import yaml

from vqgan.interop.common import (
    ConversionError,
    build_model,
    infer_taming_config,
    safe_torch_load,
    tensors_only,
)

log = logging.getLogger(__name__)

SUPPORTED_TARGETS = ("taming.models.vqgan.VQModel", "taming.models.vqgan.EMAVQ")


def find_taming_config(ckpt: Path) -> Path | None:
    """The YAML next to a checkpoint: ``NAME.yaml``, or taming's log layout ``logs/RUN/configs/*-project.yaml``
    for ``logs/RUN/checkpoints/NAME.ckpt``."""
    found = [c for c in (ckpt.with_suffix(".yaml"), ckpt.with_suffix(".yml")) if c.is_file()]
    found += sorted((ckpt.parent.parent / "configs").glob("*-project.yaml"))[-1:]
    return found[0] if found else None


def read_taming_config(path: Path) -> dict[str, Any]:
    """``model.params`` of a taming YAML (read with ``yaml.safe_load``), for a supported ``model.target``."""
    if not path.is_file():
        raise ConversionError(f"taming config {path} does not exist")
    data = yaml.safe_load(path.read_text())
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or "params" not in model:
        raise ConversionError(f"{path} is not a taming config: expected model.target and model.params")
    if model.get("target", "") not in SUPPORTED_TARGETS:
        raise ConversionError(f"{path}: model.target={model.get('target', '')!r} is not supported; "
                              f"supported: {', '.join(SUPPORTED_TARGETS)}")
    return model["params"]


def taming_state_dict(ckpt: dict[str, Any], source: str) -> dict[str, torch.Tensor]:
    """The autoencoder weights of a loaded taming checkpoint, with our key names."""
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ConversionError(f"{source}: expected a dict with a 'state_dict' entry")
    state = tensors_only(state)
    if not any(k.startswith("encoder.") for k in state):
        # a transformer checkpoint (Net2NetTransformer) holds the tokenizer under first_stage_model.
        prefix = "first_stage_model."
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise ConversionError(f"{source}: no encoder.* or first_stage_model.encoder.* weights found")
    if "quantize.used" in state:
        raise ConversionError("taming index remapping (quantize.used / remap=...) is not supported")
    if any(k.startswith(("quantize.proj.", "quantize.embed.")) for k in state):
        raise ConversionError("taming GumbelVQ checkpoints (GumbelQuantize) are not supported")
    # Dropped: the training objective (LPIPS, discriminator) and EMAVQ's running statistics (cluster_size...).
    dropped = ("loss.", "quantize.embedding.")
    return {k: v for k, v in state.items() if not k.startswith(dropped) or k == "quantize.embedding.weight"}


def _check_against_yaml(cfg, params: dict[str, Any], source: str) -> None:
    dd = params.get("ddconfig", {})
    if dd.get("double_z", False):
        raise ConversionError(f"{source}: ddconfig.double_z=True is a KL autoencoder, not a VQGAN")
    ours = dict(
        ch=cfg.ch, ch_mult=cfg.ch_mult, num_res_blocks=cfg.num_res_blocks, z_channels=cfg.z_channels,
        in_channels=cfg.in_channels, out_ch=cfg.out_channels or cfg.in_channels, embed_dim=cfg.embed_dim,
        n_embed=cfg.quantizer.codebook_size,
    )
    yml = {**dd, "ch_mult": list(dd.get("ch_mult", [])) or None, "embed_dim": params.get("embed_dim"),
           "n_embed": params.get("n_embed")}
    bad = [f"{k}: config {yml[k]} vs weights {v}" for k, v in ours.items() if yml.get(k) not in (None, v)]
    if bad:
        raise ConversionError(f"{source}: the YAML config does not match the weights: {'; '.join(bad)}")
    if params.get("remap"):
        raise ConversionError(f"{source}: taming index remapping (remap=...) is not supported")
    resolution = int(dd.get("resolution", 256))
    levels = [resolution // 2**i for i in range(len(cfg.ch_mult))]
    yaml_attn = sorted(r for r in dd.get("attn_resolutions", []) if r in levels)
    if sorted(cfg.attn_resolutions) != yaml_attn:
        raise ConversionError(f"{source}: the weights have attention at resolutions {cfg.attn_resolutions}, "
                              f"the YAML says {yaml_attn}")


def load_taming(
    path: str | Path, config: str | Path | None = None, allow_stand_ins: bool = False,
    checkpoint: dict[str, Any] | None = None,
) -> torch.nn.Module:
    """Convert a taming-transformers VQGAN checkpoint into our :class:`~vqgan.models.VQModel` (eval mode).

    ``path`` is the Lightning ``.ckpt`` (or a ``.pt`` of ``{"state_dict": ...}`` or a bare state dict);
    ``config`` its YAML (default: :func:`find_taming_config`'s), which gives the training resolution (placing
    attention) and is checked against the weights; ``checkpoint``, the file's contents if already loaded.
    """
    path, source = Path(path), str(path)
    config_path = Path(config) if config is not None else find_taming_config(path)
    if config_path is None:
        log.warning("no taming YAML config found for %s: reading the architecture from the weights only", path)
    params = read_taming_config(config_path) if config_path is not None else {}
    checkpoint = safe_torch_load(path, allow_stand_ins) if checkpoint is None else checkpoint
    state = taming_state_dict(checkpoint, source)
    dd = params.get("ddconfig", {})
    cfg = infer_taming_config(state, resolution=int(dd.get("resolution", 256)), source=source)
    if params:
        _check_against_yaml(cfg, params, source)
        cfg.dropout = float(dd.get("dropout", 0.0))
    return build_model(cfg, state, source)
