"""Convert between our autoencoder and diffusers' ``VQModel``: taming's architecture under other names
(:data:`NAMES`; decoder levels deepest first, attention projections as ``Linear`` where ours are 1x1 convs).
What ours can't represent (``norm_type="spatial"``, activations other than SiLU, attention placed differently
in encoder and decoder, widths not multiples of the first) raises :class:`ConversionError`; ``scaling_factor``
is not part of the tokenizer. Only :func:`to_diffusers` needs diffusers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from vqgan.config import ModelConfig
from vqgan.interop.common import (
    ConversionError,
    build_model,
    check_group_norms,
    rename_pieces,
    safe_torch_load,
    taming_config,
)

# diffusers.VQModel's defaults, for keys a config.json leaves out.
DIFFUSERS_DEFAULTS: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D"], "block_out_channels": [64], "layers_per_block": 1,
    "act_fn": "silu", "latent_channels": 3, "sample_size": 32, "num_vq_embeddings": 256,
    "norm_num_groups": 32, "vq_embed_dim": None, "scaling_factor": 0.18215, "norm_type": "group",
    "mid_block_add_attention": True,
}
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

# (diffusers, ours) dotted name pieces; names both share (conv_in, conv_out, quant_conv, ...) are not listed.
NAMES = [
    ("mid_block.resnets.0", "mid.block_1"), ("mid_block.resnets.1", "mid.block_2"),
    ("mid_block.attentions.0", "mid.attn_1"), ("down_blocks", "down"), ("up_blocks", "up"),
    ("resnets", "block"), ("attentions", "attn"), ("downsamplers.0", "downsample"),
    ("upsamplers.0", "upsample"), ("conv_shortcut", "nin_shortcut"), ("conv_norm_out", "norm_out"),
    ("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"),
]
# The deprecated names of older diffusers checkpoints.
_LEGACY = [("query", "q"), ("key", "k"), ("value", "v"), ("proj_attn", "proj_out")]


def _is_attn_linear(key: str) -> bool:
    return bool(re.search(r"\.(q|k|v|proj_out)\.weight$", key)) and ".attn" in key


def read_diffusers_config(folder: Path) -> tuple[Path, dict[str, Any]]:
    """The VQModel folder (``folder``, or the sub-folder of a pipeline folder with ``model_index.json`` that
    holds one) and its ``config.json`` with diffusers' defaults filled in."""
    if not (folder / "config.json").is_file() and (folder / "model_index.json").is_file():
        subs = [p for p in sorted(folder.iterdir()) if (p / "config.json").is_file()]
        vq = [p for p in subs if json.loads((p / "config.json").read_text()).get("_class_name") == "VQModel"]
        folder = vq[0] if vq else folder
    path = folder / "config.json"
    if not path.is_file():
        raise ConversionError(f"{folder}: no diffusers VQModel config.json found (nor a pipeline sub-folder "
                              "with one)")
    raw = json.loads(path.read_text())
    if raw.get("_class_name", "VQModel") != "VQModel":
        raise ConversionError(f"{path}: _class_name={raw['_class_name']!r}; only diffusers' VQModel is supported")
    return folder, {**DIFFUSERS_DEFAULTS, **{k: v for k, v in raw.items() if not k.startswith("_")}}


def diffusers_to_model_config(dc: dict[str, Any], source: str = "diffusers config") -> ModelConfig:
    """Map a diffusers VQModel config to our :class:`ModelConfig`, refusing what we can't represent."""
    if dc["norm_type"] != "group":
        raise ConversionError(f"{source}: norm_type={dc['norm_type']!r} (spatially conditioned norm) is not supported")
    if dc["act_fn"] != "silu":
        raise ConversionError(f"{source}: act_fn={dc['act_fn']!r} is not supported (only 'silu')")
    widths, down, up = list(dc["block_out_channels"]), dc["down_block_types"], dc["up_block_types"]
    ok_down = {"DownEncoderBlock2D", "AttnDownEncoderBlock2D"}
    ok_up = {"UpDecoderBlock2D", "AttnUpDecoderBlock2D"}
    if bad := [t for t in down if t not in ok_down] + [t for t in up if t not in ok_up]:
        raise ConversionError(f"{source}: block types {bad} are not supported; supported: "
                              f"{sorted(ok_down | ok_up)}")
    n = len(widths)
    if len(down) != n or len(up) != n:
        raise ConversionError(f"{source}: down/up block types don't match block_out_channels={widths}")
    size = dc["sample_size"]
    return taming_config(
        source, widths[0], widths, [i for i, t in enumerate(down) if t.startswith("Attn")],
        sorted(n - 1 - k for k, t in enumerate(up) if t.startswith("Attn")),
        int(size[0] if isinstance(size, (list, tuple)) else size), dc["num_vq_embeddings"],
        in_channels=dc["in_channels"], out_channels=dc["out_channels"], num_res_blocks=dc["layers_per_block"],
        mid_attention=bool(dc["mid_block_add_attention"]), z_channels=dc["latent_channels"],
        embed_dim=dc["vq_embed_dim"] or dc["latent_channels"], num_groups=dc["norm_num_groups"],
    )


def load_diffusers(folder: str | Path) -> torch.nn.Module:
    """Convert a diffusers ``VQModel`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``) into
    our :class:`~vqgan.models.VQModel` (eval mode); also accepts a pipeline folder with a VQModel sub-folder."""
    folder, dc = read_diffusers_config(Path(folder))
    cfg = diffusers_to_model_config(dc, str(folder))
    weights = next((folder / w for w in WEIGHT_NAMES if (folder / w).is_file()), None)
    if weights is None:
        raise ConversionError(f"{folder}: none of {', '.join(WEIGHT_NAMES)} found")
    state = load_file(str(weights)) if weights.suffix == ".safetensors" else safe_torch_load(weights)
    state = {rename_pieces(k, NAMES + _LEGACY, len(cfg.ch_mult)): v for k, v in state.items()}
    state = {k: v[:, :, None, None] if _is_attn_linear(k) and v.dim() == 2 else v for k, v in state.items()}
    return build_model(cfg, state, str(weights))


def model_config_to_diffusers(cfg: ModelConfig) -> dict[str, Any]:
    """The diffusers VQModel constructor arguments for our config (taming architecture, plain VQ only)."""
    q = cfg.quantizer
    problems = {
        f"arch={cfg.arch!r}": cfg.arch != "taming",
        f"upsample={cfg.upsample!r}": cfg.upsample != "nearest",
        f"decoder widths of their own (decoder_ch={cfg.decoder_ch}, decoder_ch_mult={cfg.decoder_ch_mult})":
            not cfg.decoder_mirrors_encoder,
        f"output_activation={cfg.output_activation!r}": cfg.output_activation != "none",
        f"quantizer.kind={q.kind!r}": q.kind not in ("vq", "ema"),
        "quantizer.l2_normalize=True": q.l2_normalize,
        f"quantizer.codebook_dim={q.codebook_dim}": q.codebook_dim not in (None, cfg.embed_dim),
    }
    if bad := [p for p, wrong in problems.items() if wrong]:
        raise ConversionError(f"diffusers' VQModel can't represent {', '.join(bad)}")
    n = len(cfg.ch_mult)
    attn = [i for i in range(n) if cfg.resolution // 2**i in cfg.attn_resolutions]
    return dict(
        in_channels=cfg.in_channels, out_channels=cfg.out_channels or cfg.in_channels,
        down_block_types=tuple("AttnDownEncoderBlock2D" if i in attn else "DownEncoderBlock2D" for i in range(n)),
        up_block_types=tuple("AttnUpDecoderBlock2D" if n - 1 - k in attn else "UpDecoderBlock2D" for k in range(n)),
        block_out_channels=tuple(cfg.ch * m for m in cfg.ch_mult), layers_per_block=cfg.num_res_blocks,
        act_fn="silu", latent_channels=cfg.z_channels, sample_size=cfg.resolution,
        num_vq_embeddings=q.codebook_size, norm_num_groups=cfg.num_groups, vq_embed_dim=cfg.embed_dim,
        mid_block_add_attention=cfg.mid_attention,
    )


def diffusers_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our model's weights under diffusers' VQModel key names (attention 1x1 convs as Linear weights)."""
    n, pairs = len(model.config.ch_mult), [(ours, theirs) for theirs, ours in NAMES]
    # Our quantizer's bookkeeping buffers (usage counters, EMA statistics) have no diffusers counterpart.
    skip = {k for k, _ in model.named_buffers() if k.startswith("quantize.")}
    state = {k: v for k, v in model.state_dict().items() if k not in skip}
    return {rename_pieces(k, pairs, n): v[:, :, 0, 0] if _is_attn_linear(k) else v for k, v in state.items()}


def to_diffusers(model: torch.nn.Module):
    """Build an equivalent ``diffusers.VQModel`` (needs diffusers installed). Its ``legacy`` quantizer loss
    placement does not matter for inference."""
    try:
        from diffusers import VQModel as DiffusersVQModel
    except ImportError as e:  # pragma: no cover - diffusers is a test dependency
        raise ConversionError("exporting to diffusers needs the diffusers package: pip install diffusers") from e
    check_group_norms(model, model.config.num_groups, "model")
    out = DiffusersVQModel(**model_config_to_diffusers(model.config))
    out.load_state_dict(diffusers_state_dict(model), strict=True)
    return out.eval()


def save_diffusers(model: torch.nn.Module, directory: str | Path) -> Path:
    """Write our model as a diffusers VQModel folder (``config.json`` + ``diffusion_pytorch_model.safetensors``)."""
    to_diffusers(model).save_pretrained(str(directory), safe_serialization=True)
    return Path(directory)
