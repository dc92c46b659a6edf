"""Helpers shared by the converters: safe loading of pickled checkpoints, key renaming with a report of what
did not map, inference of a taming-style :class:`ModelConfig` from a state dict, and strict loading.

Safety: nothing here executes code from a file. ``.ckpt`` / ``.pt`` files are read with ``torch.load(...,
weights_only=True)``; a file that holds other Python objects (taming's Lightning callbacks, LlamaGen's
``argparse.Namespace``) is refused with the list of the objects it names, unless the caller asks for
*stand-ins*: every such name is then bound to an inert placeholder class that only records its arguments, so the
unpickler can build the containers around the tensors without importing or calling anything from the file.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vqgan.config import ConfigError, ModelConfig, QuantizerConfig
from vqgan.models.io import unusable_file


class ConversionError(ConfigError):
    """A file that can't be converted: unknown format, unsupported option, unsafe pickle, mismatched keys."""


class StandIn:
    """Inert placeholder for a class or function named inside a pickle (see :func:`safe_torch_load`).

    Creating, calling or building one only records the arguments; nothing from the file is imported or run.
    """

    _name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> StandIn:
        obj = object.__new__(cls)
        obj.args = args
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<stand-in for {self._name}>"


def _stand_in(full_name: str) -> type:
    module, _, name = full_name.rpartition(".")
    return type(name or full_name, (StandIn,), {"__module__": f"standin.{module}", "_name": full_name})


def _reason(e: Exception) -> str:
    """The informative line of torch's weights-only error (it starts with generic advice)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Weights only load failed", "Check the documentation"))]
    return (useful or lines or ["unpickling error"])[0]


def safe_torch_load(path: str | Path, allow_stand_ins: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, with clear errors.

    Args:
        path: a ``.ckpt`` / ``.pt`` / ``.bin`` file.
        allow_stand_ins: when the file names Python classes or functions that ``weights_only`` refuses, bind each
            of them to an inert :class:`StandIn` instead of refusing the file. Tensors load normally; the other
            objects become placeholders. No code from the file runs either way.

    Raises:
        ConversionError: missing, empty or corrupt file, or (without ``allow_stand_ins``) a file that needs
            Python objects, listing them.
    """
    path = Path(path)
    if why := unusable_file(path):
        raise ConversionError(why)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first_error = _reason(e)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise ConversionError(f"{path} is corrupt or not a PyTorch file: {str(e).splitlines()[0]}") from None
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # a legacy (non-zip) file: the names can't be listed without unpickling
        names = []
    if not allow_stand_ins or not names:
        listed = f" It names: {', '.join(names)}." if names else ""
        hint = (
            " Pass allow_stand_ins=True (command line: --allow-stand-ins true) to read the tensors with inert "
            "placeholders in place of those objects; nothing from the file is executed either way."
            if names
            else ""
        )
        raise ConversionError(
            f"refusing to load {path}: it needs to import or run Python code to unpickle ({first_error}).{listed}"
            f" Only tensors and plain containers are loaded (torch.load weights_only=True).{hint}"
        )
    stand_ins = [(_stand_in(n), n) for n in names]
    try:
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ConversionError(f"refusing to load {path} even with stand-ins: {_reason(e)}") from None


def tensors_only(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensor entries of a state dict, as plain contiguous CPU tensors (``Parameter`` unwrapped)."""
    return {k: v.detach().contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}


def rename_keys(
    state: dict[str, torch.Tensor], rename: Callable[[str], str | None], source: str
) -> dict[str, torch.Tensor]:
    """Apply ``rename`` to every key; ``None`` drops a key on purpose. Keys it can't map raise, listed."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        try:
            new = rename(key)
        except KeyError:
            unknown.append(key)
            continue
        if new is not None:
            out[new] = value
    if unknown:
        more = f" (+{len(unknown) - 30} more)" if len(unknown) > 30 else ""
        raise ConversionError(f"{source}: unknown key(s) that can't be mapped: {', '.join(unknown[:30])}{more}")
    return out


_LEVEL = re.compile(r"(encoder\.down|decoder\.up)\.(\d+)\.")


def infer_taming_config(
    state: dict[str, torch.Tensor],
    resolution: int = 256,
    num_groups: int = 32,
    l2_normalize: bool = False,
    source: str = "state dict",
) -> ModelConfig:
    """Read a taming-style architecture from a state dict that already uses our key names.

    Everything that changes the computation is visible in the tensors: widths (``ch``, ``ch_mult``), blocks per
    level, which levels have attention, the mid-block attention, latent and code sizes. ``resolution`` only
    places attention (it is taken from the source's config when there is one); ``num_groups`` and
    ``l2_normalize`` are not visible in the weights.
    """
    try:
        ch = state["encoder.conv_in.weight"].shape[0]
        in_channels = state["encoder.conv_in.weight"].shape[1]
        out_channels = state["decoder.conv_out.weight"].shape[0]
        z_channels = state["encoder.conv_out.weight"].shape[0]
        embed_dim = state["quant_conv.weight"].shape[0]
        codebook_size = state["quantize.embedding.weight"].shape[0]
    except KeyError as e:
        raise ConversionError(f"{source}: not a taming-style autoencoder, {e.args[0]!r} is missing") from None
    if state["quantize.embedding.weight"].shape[1] != embed_dim:
        raise ConversionError(
            f"{source}: codebook vectors have {state['quantize.embedding.weight'].shape[1]} dimensions but "
            f"quant_conv outputs {embed_dim}; factorized codebooks are not supported for this format"
        )
    levels = sorted({int(m.group(2)) for k in state for m in [_LEVEL.match(k)] if m and m.group(1) == "encoder.down"})
    ch_mult, attn_levels, blocks = [], [], set()
    for i in levels:
        widths = [state[k].shape[0] for k in state if re.fullmatch(rf"encoder\.down\.{i}\.block\.\d+\.conv1\.weight", k)]
        blocks.add(len(widths))
        if not widths or widths[0] % ch:
            raise ConversionError(f"{source}: level {i} width {widths[:1]} is not a multiple of ch={ch}")
        ch_mult.append(widths[0] // ch)
        if f"encoder.down.{i}.attn.0.q.weight" in state:
            attn_levels.append(i)
    if len(blocks) != 1:
        raise ConversionError(f"{source}: levels have different numbers of residual blocks {sorted(blocks)}")
    dec_attn = sorted(
        {int(m.group(2)) for k in state for m in [_LEVEL.match(k)] if m and m.group(1) == "decoder.up" and ".attn." in k}
    )
    if dec_attn != attn_levels:
        raise ConversionError(
            f"{source}: the encoder has attention at levels {attn_levels} but the decoder at {dec_attn}; our "
            "autoencoder places attention symmetrically"
        )
    factor = 2 ** (len(ch_mult) - 1)
    if resolution % factor:
        resolution = 16 * factor
    return ModelConfig(
        arch="taming",
        in_channels=in_channels,
        out_channels=out_channels if out_channels != in_channels else None,
        resolution=resolution,
        ch=ch,
        ch_mult=ch_mult,
        num_res_blocks=blocks.pop(),
        attn_resolutions=[resolution // 2**i for i in attn_levels],
        mid_attention="encoder.mid.attn_1.q.weight" in state,
        z_channels=z_channels,
        embed_dim=embed_dim,
        num_groups=num_groups,
        quantizer=QuantizerConfig(
            kind="vq", codebook_size=codebook_size, l2_normalize=l2_normalize, kmeans_init=False,
            dead_code_threshold=0.0,
        ),
    )


def check_group_norms(model: torch.nn.Module, num_groups: int, source: str) -> None:
    """Our ``group_norm`` uses fewer groups when a width is not divisible; the source never does. Refuse a model
    whose layers would silently differ."""
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.GroupNorm) and mod.num_groups != num_groups:
            raise ConversionError(
                f"{source}: layer {name} has {mod.num_channels} channels, not divisible into {num_groups} groups"
            )


def build_model(config: ModelConfig, state: dict[str, torch.Tensor], source: str):
    """Instantiate our :class:`VQModel` for ``config`` and load ``state`` strictly (eval mode).

    Our quantizer's own bookkeeping buffers (usage counters, the k-means flag) are not in foreign files; they
    keep their fresh values. Every other missing, unexpected or mis-shaped key raises, listed.
    """
    from vqgan.models import VQModel
    from vqgan.models.pretrained import load_state_dict_strict

    model = VQModel(config)
    check_group_norms(model, config.num_groups, source)
    own = model.state_dict()
    buffers = {k for k, _ in model.named_buffers() if k in own and k.startswith("quantize.")}
    state = {**{k: own[k] for k in buffers if k not in state}, **state}
    try:
        load_state_dict_strict(model, state, source=source)
    except ConfigError as e:
        raise ConversionError(str(e)) from None
    return model.eval()
