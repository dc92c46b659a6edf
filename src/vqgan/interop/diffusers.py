"""Convert between our autoencoder and diffusers' ``VQModel`` (``diffusers/models/autoencoders/vq_model.py``).

diffusers' VQModel is taming's architecture with other names; the mapping (``n`` = number of levels):

========================================================  ==================================================
diffusers                                                 ours
========================================================  ==================================================
``encoder.down_blocks.{i}.resnets.{j}``                   ``encoder.down.{i}.block.{j}``
``...resnets.{j}.conv_shortcut`` (1x1)                    ``...block.{j}.nin_shortcut``
``encoder.down_blocks.{i}.attentions.{j}``                ``encoder.down.{i}.attn.{j}``
``...attentions.{j}.group_norm / to_q / to_k / to_v``     ``...attn.{j}.norm / q / k / v`` (Linear -> 1x1 conv)
``...attentions.{j}.to_out.0``                            ``...attn.{j}.proj_out``
``encoder.down_blocks.{i}.downsamplers.0.conv``           ``encoder.down.{i}.downsample.conv``
``{encoder,decoder}.mid_block.resnets.{0,1}``             ``mid.block_1``, ``mid.block_2``
``{encoder,decoder}.mid_block.attentions.0``              ``mid.attn_1``
``{encoder,decoder}.conv_norm_out``                       ``norm_out``
``decoder.up_blocks.{k}`` (deepest level first)           ``decoder.up.{n-1-k}`` (encoder order)
``decoder.up_blocks.{k}.upsamplers.0.conv``               ``decoder.up.{n-1-k}.upsample.conv``
========================================================  ==================================================

Both use one attention head of full width, GroupNorm with ``eps=1e-6``, asymmetric (0, 1, 0, 1) padding before
the stride-2 downsampling conv, nearest upsampling then a 3x3 conv, and ``layers_per_block + 1`` residual blocks
per decoder level. Options our model can't represent raise :class:`ConversionError`: ``norm_type="spatial"``
(MoVQ's spatially conditioned decoder norm), an activation other than SiLU, attention placed differently in
encoder and decoder, block widths that are not multiples of the first. diffusers' ``scaling_factor`` (for
latent diffusion) is not part of the tokenizer; it is returned by :func:`read_diffusers_config`.

Loading reads ``config.json`` (JSON) and ``diffusion_pytorch_model.safetensors`` (or the ``.bin``, with
``weights_only=True``); diffusers itself is only needed for :func:`to_diffusers`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from vqgan.config import ModelConfig, QuantizerConfig
from vqgan.interop.common import ConversionError, build_model, check_group_norms, rename_keys, safe_torch_load

# diffusers.VQModel's defaults, for keys a config.json leaves out.
DIFFUSERS_DEFAULTS: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D"],
    "block_out_channels": [64],
    "layers_per_block": 1,
    "act_fn": "silu",
    "latent_channels": 3,
    "sample_size": 32,
    "num_vq_embeddings": 256,
    "norm_num_groups": 32,
    "vq_embed_dim": None,
    "scaling_factor": 0.18215,
    "norm_type": "group",
    "mid_block_add_attention": True,
}
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

_RES = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
# Current names, then the deprecated ones of older diffusers checkpoints (query/key/value/proj_attn).
_ATTN = {
    "group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
    "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out",
}
_ATTN_INV = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_MID = {"resnets.0": "block_1", "resnets.1": "block_2", "attentions.0": "attn_1"}


def _sub_module(kind: str, rest: str, table: dict[str, str]) -> str:
    for src, dst in table.items():
        if rest.startswith(src + "."):
            return dst + rest[len(src) :]
    raise KeyError(f"{kind}.{rest}")


def _to_ours(key: str, n: int) -> str:
    m = re.fullmatch(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        part, _, level, kind, j, rest = m.groups()
        level = int(level) if part == "encoder" else n - 1 - int(level)
        where = "down" if part == "encoder" else "up"
        if kind == "resnets":
            return f"{part}.{where}.{level}.block.{j}.{_sub_module(kind, rest, _RES)}"
        return f"{part}.{where}.{level}.attn.{j}.{_sub_module(kind, rest, _ATTN)}"
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)", key)
    if m:
        return f"encoder.down.{m.group(1)}.downsample.conv.{m.group(2)}"
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)", key)
    if m:
        return f"decoder.up.{n - 1 - int(m.group(1))}.upsample.conv.{m.group(2)}"
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.(resnets\.[01]|attentions\.0)\.(.*)", key)
    if m:
        part, sub, rest = m.groups()
        table = _RES if sub.startswith("resnets") else _ATTN
        return f"{part}.mid.{_MID[sub]}.{_sub_module(sub, rest, table)}"
    m = re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(weight|bias)", key)
    if m:
        return f"{m.group(1)}.norm_out.{m.group(2)}"
    if re.fullmatch(
        r"(encoder|decoder)\.(conv_in|conv_out)\.(weight|bias)|(quant_conv|post_quant_conv)\.(weight|bias)"
        r"|quantize\.embedding\.weight",
        key,
    ):
        return key
    raise KeyError(key)


def _to_diffusers(key: str, n: int) -> str:
    m = re.fullmatch(r"(encoder|decoder)\.(down|up)\.(\d+)\.(block|attn)\.(\d+)\.(.*)", key)
    if m:
        part, where, level, kind, j, rest = m.groups()
        level = int(level) if part == "encoder" else n - 1 - int(level)
        if kind == "block":
            rest = _sub_module(kind, rest, {v: k for k, v in _RES.items()})
            return f"{part}.{where}_blocks.{level}.resnets.{j}.{rest}"
        return f"{part}.{where}_blocks.{level}.attentions.{j}.{_sub_module(kind, rest, _ATTN_INV)}"
    m = re.fullmatch(r"encoder\.down\.(\d+)\.downsample\.conv\.(weight|bias)", key)
    if m:
        return f"encoder.down_blocks.{m.group(1)}.downsamplers.0.conv.{m.group(2)}"
    m = re.fullmatch(r"decoder\.up\.(\d+)\.upsample\.conv\.(weight|bias)", key)
    if m:
        return f"decoder.up_blocks.{n - 1 - int(m.group(1))}.upsamplers.0.conv.{m.group(2)}"
    m = re.fullmatch(r"(encoder|decoder)\.mid\.(block_1|block_2|attn_1)\.(.*)", key)
    if m:
        part, sub, rest = m.groups()
        diff = {v: k for k, v in _MID.items()}[sub]
        rest = _sub_module(sub, rest, {v: k for k, v in _RES.items()} if sub != "attn_1" else _ATTN_INV)
        return f"{part}.mid_block.{diff}.{rest}"
    m = re.fullmatch(r"(encoder|decoder)\.norm_out\.(weight|bias)", key)
    if m:
        return f"{m.group(1)}.conv_norm_out.{m.group(2)}"
    return _to_ours(key, n)  # the names both share (conv_in, conv_out, quant_conv, codebook)


def _is_attn_linear(key: str) -> bool:
    return bool(re.search(r"\.(q|k|v|proj_out)\.weight$", key)) and ".attn" in key


def read_diffusers_config(folder: str | Path) -> dict[str, Any]:
    """diffusers' ``config.json`` of a VQModel folder with its defaults filled in."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ConversionError(f"{path} not found: a diffusers model folder holds config.json and its weights")
    raw = json.loads(path.read_text())
    if raw.get("_class_name", "VQModel") != "VQModel":
        raise ConversionError(f"{path}: _class_name={raw['_class_name']!r}; only diffusers' VQModel is supported")
    return {**DIFFUSERS_DEFAULTS, **{k: v for k, v in raw.items() if not k.startswith("_")}}


def diffusers_to_model_config(dc: dict[str, Any], source: str = "diffusers config") -> ModelConfig:
    """Map a diffusers VQModel config to our :class:`ModelConfig`, refusing what we can't represent."""
    if dc["norm_type"] != "group":
        raise ConversionError(f"{source}: norm_type={dc['norm_type']!r} (spatially conditioned norm) is not supported")
    if dc["act_fn"] != "silu":
        raise ConversionError(f"{source}: act_fn={dc['act_fn']!r} is not supported (only 'silu')")
    widths = list(dc["block_out_channels"])
    n = len(widths)
    ok_down = {"DownEncoderBlock2D", "AttnDownEncoderBlock2D"}
    ok_up = {"UpDecoderBlock2D", "AttnUpDecoderBlock2D"}
    bad = [t for t in dc["down_block_types"] if t not in ok_down] + [t for t in dc["up_block_types"] if t not in ok_up]
    if bad:
        raise ConversionError(f"{source}: block types {bad} are not supported; supported: {sorted(ok_down | ok_up)}")
    if len(dc["down_block_types"]) != n or len(dc["up_block_types"]) != n:
        raise ConversionError(f"{source}: down/up block types don't match block_out_channels={widths}")
    if any(w % widths[0] for w in widths):
        raise ConversionError(f"{source}: block_out_channels={widths} are not multiples of the first width")
    enc_attn = [i for i, t in enumerate(dc["down_block_types"]) if t.startswith("Attn")]
    dec_attn = sorted(n - 1 - k for k, t in enumerate(dc["up_block_types"]) if t.startswith("Attn"))
    if enc_attn != dec_attn:
        raise ConversionError(
            f"{source}: attention at encoder levels {enc_attn} but decoder levels {dec_attn}; our autoencoder "
            "places attention symmetrically"
        )
    size = dc["sample_size"]
    resolution = int(size[0] if isinstance(size, (list, tuple)) else size)
    factor = 2 ** (n - 1)
    if resolution % factor:
        resolution = 16 * factor
    embed_dim = dc["vq_embed_dim"] or dc["latent_channels"]
    return ModelConfig(
        arch="taming",
        in_channels=dc["in_channels"],
        out_channels=dc["out_channels"] if dc["out_channels"] != dc["in_channels"] else None,
        resolution=resolution,
        ch=widths[0],
        ch_mult=[w // widths[0] for w in widths],
        num_res_blocks=dc["layers_per_block"],
        attn_resolutions=[resolution // 2**i for i in enc_attn],
        mid_attention=bool(dc["mid_block_add_attention"]),
        z_channels=dc["latent_channels"],
        embed_dim=embed_dim,
        num_groups=dc["norm_num_groups"],
        quantizer=QuantizerConfig(
            kind="vq", codebook_size=dc["num_vq_embeddings"], kmeans_init=False, dead_code_threshold=0.0
        ),
    )


def _find_vq_folder(folder: Path) -> Path:
    """A VQModel folder, or the sub-folder of a pipeline (``model_index.json``) that holds one."""
    if (folder / "config.json").is_file():
        return folder
    if (folder / "model_index.json").is_file():
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            cfg = sub / "config.json"
            if cfg.is_file() and json.loads(cfg.read_text()).get("_class_name") == "VQModel":
                return sub
    raise ConversionError(f"{folder}: no diffusers VQModel config.json found (nor a pipeline sub-folder with one)")


def load_diffusers(folder: str | Path) -> torch.nn.Module:
    """Convert a diffusers ``VQModel`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``) into
    our :class:`~vqgan.models.VQModel` (eval mode); also accepts a pipeline folder with a VQModel sub-folder."""
    folder = _find_vq_folder(Path(folder))
    source = str(folder)
    dc = read_diffusers_config(folder)
    cfg = diffusers_to_model_config(dc, source)
    weights = next((folder / w for w in WEIGHT_NAMES if (folder / w).is_file()), None)
    if weights is None:
        raise ConversionError(f"{folder}: none of {', '.join(WEIGHT_NAMES)} found")
    if weights.suffix == ".safetensors":
        state = load_file(str(weights))
    else:
        state = safe_torch_load(weights)
    n = len(cfg.ch_mult)
    state = rename_keys(state, lambda k: _to_ours(k, n), str(weights))
    state = {k: v[:, :, None, None] if _is_attn_linear(k) and v.dim() == 2 else v for k, v in state.items()}
    return build_model(cfg, state, str(weights))


def model_config_to_diffusers(cfg: ModelConfig) -> dict[str, Any]:
    """The diffusers VQModel constructor arguments for our config (taming architecture, plain VQ only)."""
    q = cfg.quantizer
    problems = []
    if cfg.arch != "taming":
        problems.append(f"arch={cfg.arch!r}")
    if cfg.upsample != "nearest":
        problems.append(f"upsample={cfg.upsample!r}")
    if not cfg.decoder_mirrors_encoder:
        problems.append(f"decoder widths of their own (decoder_ch={cfg.decoder_ch}, decoder_ch_mult={cfg.decoder_ch_mult})")
    if cfg.output_activation != "none":
        problems.append(f"output_activation={cfg.output_activation!r}")
    if q.kind not in ("vq", "ema"):
        problems.append(f"quantizer.kind={q.kind!r}")
    if q.l2_normalize:
        problems.append("quantizer.l2_normalize=True")
    if q.codebook_dim not in (None, cfg.embed_dim):
        problems.append(f"quantizer.codebook_dim={q.codebook_dim}")
    if problems:
        raise ConversionError(f"diffusers' VQModel can't represent {', '.join(problems)}")
    n = len(cfg.ch_mult)
    attn = [i for i in range(n) if cfg.resolution // 2**i in cfg.attn_resolutions]
    return dict(
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels or cfg.in_channels,
        down_block_types=tuple("AttnDownEncoderBlock2D" if i in attn else "DownEncoderBlock2D" for i in range(n)),
        up_block_types=tuple("AttnUpDecoderBlock2D" if n - 1 - k in attn else "UpDecoderBlock2D" for k in range(n)),
        block_out_channels=tuple(cfg.ch * m for m in cfg.ch_mult),
        layers_per_block=cfg.num_res_blocks,
        act_fn="silu",
        latent_channels=cfg.z_channels,
        sample_size=cfg.resolution,
        num_vq_embeddings=q.codebook_size,
        norm_num_groups=cfg.num_groups,
        vq_embed_dim=cfg.embed_dim,
        mid_block_add_attention=cfg.mid_attention,
    )


def diffusers_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our model's weights under diffusers' VQModel key names (attention 1x1 convs as Linear weights)."""
    n = len(model.config.ch_mult)
    buffers = {k for k, _ in model.named_buffers()}
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("quantize.") and key in buffers:
            continue  # our quantizer's bookkeeping (usage counters, EMA statistics); diffusers has none
        new = _to_diffusers(key, n)
        out[new] = value[:, :, 0, 0] if _is_attn_linear(key) else value
    return out


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
    directory = Path(directory)
    to_diffusers(model).save_pretrained(str(directory), safe_serialization=True)
    return directory
