"""Interoperability: load taming-transformers, LlamaGen and diffusers tokenizers into our
:class:`~vqgan.models.VQModel`, write diffusers folders, export ONNX / TorchScript graphs, and project latents to
the channel count a downstream model expects. Every loader reads JSON, YAML (``safe_load``), safetensors or
``torch.load(weights_only=True)``: no code from a file is ever executed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch

from vqgan.interop.common import ConversionError, StandIn, safe_torch_load
from vqgan.interop.diffusers import load_diffusers, save_diffusers, to_diffusers
from vqgan.interop.llamagen import load_llamagen
from vqgan.interop.taming import load_taming
from vqgan.models.io import load_model
from vqgan.models.pretrained import from_pretrained

FORMATS = ("vqgan", "taming", "llamagen", "diffusers")


def _detect(path: Path, allow_stand_ins: bool) -> tuple[str, Any]:
    """The format of ``path``, and the file's contents when it had to be loaded to tell."""
    if not path.is_dir():
        ckpt = safe_torch_load(path, allow_stand_ins)
        if not isinstance(ckpt, dict):
            raise ConversionError(f"{path}: expected a dict of weights, got {type(ckpt).__name__}")
        if isinstance(ckpt.get("hyper_parameters"), dict) and "config" in ckpt["hyper_parameters"]:
            return "vqgan", ckpt
        inner = [ckpt] + [ckpt[k] for k in ("model", "ema", "state_dict") if isinstance(ckpt.get(k), dict)]
        keys = [k for d in inner for k in d if isinstance(k, str)]
        if any(".conv_blocks." in k for k in keys):
            return "llamagen", ckpt
        if any(k.startswith(("encoder.down.", "first_stage_model.encoder.down.")) for k in keys):
            return "taming", ckpt
        raise ConversionError(f"{path}: neither a taming, a LlamaGen nor a vqgan checkpoint "
                              f"(entries: {sorted(ckpt)[:10]})")
    cfg = path / "config.json"
    data = json.loads(cfg.read_text()) if cfg.is_file() else {}
    if "_class_name" in data or "_diffusers_version" in data:
        return "diffusers", None
    if "arch" in data and (path / "model.safetensors").is_file():
        return "vqgan", None
    if (path / "model_index.json").is_file():
        return "diffusers", None
    raise ConversionError(f"{path}: not a known model folder (ours: config.json + model.safetensors; "
                          "diffusers: config.json with _class_name VQModel + "
                          "diffusion_pytorch_model.safetensors)")


def detect_format(path: str | Path, allow_stand_ins: bool = False) -> str:
    """``vqgan``, ``taming``, ``llamagen`` or ``diffusers``, from a folder's config or a checkpoint's keys."""
    return _detect(Path(path), allow_stand_ins)[0]


def load_pretrained(
    path: str | Path, source: Literal["auto", "vqgan", "taming", "llamagen", "diffusers"] = "auto",
    config: str | Path | None = None, allow_stand_ins: bool = False, l2_normalize: bool | None = None,
    use_ema: bool = False,
) -> torch.nn.Module:
    """Load a tokenizer from any supported format into our :class:`~vqgan.models.VQModel` (eval mode, CPU).

    >>> model = load_pretrained("vqgan_imagenet_f16_1024.ckpt", allow_stand_ins=True)  # doctest: +SKIP

    Args:
        path: our folder or training ``.ckpt``; a diffusers VQModel folder; a taming ``.ckpt`` (its YAML next
            to it, in ``../configs/`` or ``config``); a LlamaGen ``.pt``.
        allow_stand_ins: read checkpoints that pickle Python objects (Lightning callbacks, ``argparse``
            namespaces) with inert placeholders instead of refusing them. No code from the file runs.
        l2_normalize, use_ema: LlamaGen only, see :func:`~vqgan.interop.llamagen.load_llamagen`.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    ckpt = None
    if source == "auto":
        source, ckpt = _detect(path, allow_stand_ins)
    if source == "diffusers":
        return load_diffusers(path)
    if source == "taming":
        return load_taming(path, config, allow_stand_ins, checkpoint=ckpt)
    if source == "llamagen":
        return load_llamagen(path, l2_normalize, use_ema, allow_stand_ins, checkpoint=ckpt)
    if source != "vqgan":
        raise ConversionError(f"unknown source format {source!r}; choose one of auto, {', '.join(FORMATS)}")
    return from_pretrained(path) if path.is_dir() else load_model(path)[0]


__all__ = [
    "FORMATS", "ConversionError", "StandIn", "detect_format", "load_diffusers", "load_llamagen",
    "load_pretrained", "load_taming", "safe_torch_load", "save_diffusers", "to_diffusers",
]
