"""Helpers shared by the converters: :func:`safe_torch_load` (no code from a file ever runs), key renaming,
a taming-style :class:`ModelConfig` read from a state dict, and strict loading."""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from vqgan.config import ConfigError, ModelConfig, QuantizerConfig
from vqgan.models import VQModel
from vqgan.models.io import load_state_dict_strict, unusable_file


class ConversionError(ConfigError):
    """A file that can't be converted: unknown format, unsupported option, unsafe pickle, mismatched keys."""


class StandIn:
    """Inert placeholder for a class or function named inside a pickle: building one only records the
    arguments, so the unpickler builds the containers around the tensors without running anything."""

    def __new__(cls, *args: Any, **kwargs: Any) -> StandIn:
        obj = object.__new__(cls)
        obj.args = args
        return obj

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _reason(e: Exception) -> str:
    """The informative line of torch's weights-only error (it starts with generic advice)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Weights only load failed", "Check the documentation"))]
    return (useful or lines or ["unpickling error"])[0]


def safe_torch_load(path: str | Path, allow_stand_ins: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; :class:`ConversionError` for a missing, empty or
    corrupt file, or one needing Python objects (listed) unless ``allow_stand_ins`` binds each to StandIn."""
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
        hint = (" Pass allow_stand_ins=True (command line: --allow-stand-ins true) to read the tensors"
                " with inert placeholders in place of those objects; nothing from the file is executed"
                " either way.")
        raise ConversionError(
            f"refusing to load {path}: it needs to import or run Python code to unpickle ({first_error})."
            f"{listed} Only tensors and plain containers are loaded (torch.load weights_only=True)."
            + (hint if names else "")
        )
    stand_ins = []
    for full in names:  # each a class ``standin.<module>.<name>``
        module, _, name = full.rpartition(".")
        stand_ins.append((type(name, (StandIn,), {"__module__": f"standin.{module}"}), full))
    try:
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ConversionError(f"refusing to load {path} even with stand-ins: {_reason(e)}") from None


def tensors_only(state: dict[str, Any], prefixes: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The tensor entries of a state dict as plain contiguous tensors, without any of ``prefixes`` that every
    key carries (a DDP or ``torch.compile`` wrapper's)."""
    state = {k: v.detach().contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    for prefix in prefixes:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def rename_pieces(key: str, pairs: Iterable[tuple[str, str]], levels: int) -> str:
    """Replace each dotted name piece ``a`` by ``b`` for ``(a, b)`` in ``pairs`` (whole pieces, in order),
    then renumber the decoder's levels ``decoder.up.{k}`` -> ``.{levels-1-k}`` (diffusers and LlamaGen list
    them deepest first, taming and we in encoder order)."""
    key = f".{key}."
    for a, b in pairs:
        key = key.replace(f".{a}.", f".{b}.")
    key = re.sub(r"^\.decoder\.(up|up_blocks)\.(\d+)\.",
                 lambda m: f".decoder.{m[1]}.{levels - 1 - int(m[2])}.", key)
    return key[1:-1]


def taming_config(
    source: str, ch: int, widths: list[int], enc_attn: list[int], dec_attn: list[int], resolution: int,
    codebook_size: int, l2_normalize: bool = False, **fields: Any,
) -> ModelConfig:
    """Our taming-style :class:`ModelConfig` for level ``widths`` and attention levels (``resolution`` only
    places attention), refusing what our autoencoder can't represent."""
    if any(w % ch for w in widths):
        raise ConversionError(f"{source}: level widths {widths} are not multiples of ch={ch}")
    if enc_attn != dec_attn:
        raise ConversionError(f"{source}: attention at encoder levels {enc_attn} but decoder levels "
                              f"{dec_attn}; our autoencoder places attention symmetrically")
    if resolution % 2 ** (len(widths) - 1):
        resolution = 16 * 2 ** (len(widths) - 1)
    if fields["out_channels"] == fields["in_channels"]:
        fields["out_channels"] = None
    return ModelConfig(
        arch="taming", resolution=resolution, ch=ch, ch_mult=[w // ch for w in widths],
        attn_resolutions=[resolution // 2**i for i in enc_attn],
        quantizer=QuantizerConfig(kind="vq", codebook_size=codebook_size, l2_normalize=l2_normalize,
                                  kmeans_init=False, dead_code_threshold=0.0),
        **fields,
    )


def infer_taming_config(
    state: dict[str, torch.Tensor], resolution: int = 256, num_groups: int = 32, l2_normalize: bool = False,
    source: str = "state dict",
) -> ModelConfig:
    """Read a taming-style architecture from a state dict that already uses our key names: everything that
    changes the computation is in the tensors, except ``num_groups`` and ``l2_normalize``."""
    try:
        conv_in, codebook = state["encoder.conv_in.weight"], state["quantize.embedding.weight"]
        sizes = dict(
            in_channels=conv_in.shape[1], out_channels=state["decoder.conv_out.weight"].shape[0],
            z_channels=state["encoder.conv_out.weight"].shape[0],
            embed_dim=state["quant_conv.weight"].shape[0],
        )
    except KeyError as e:
        raise ConversionError(f"{source}: not a taming-style autoencoder, {e.args[0]!r} is missing") from None
    if codebook.shape[1] != sizes["embed_dim"]:
        raise ConversionError(f"{source}: codebook vectors have {codebook.shape[1]} dimensions but "
                              f"quant_conv outputs {sizes['embed_dim']}; factorized codebooks are not "
                              "supported for this format")
    widths, enc_attn, blocks = [], [], set()
    for i in sorted({int(m[1]) for k in state if (m := re.match(r"encoder\.down\.(\d+)\.", k))}):
        conv1 = re.compile(rf"encoder\.down\.{i}\.block\.\d+\.conv1\.weight")
        convs = [v.shape[0] for k, v in state.items() if conv1.fullmatch(k)]
        if not convs:
            raise ConversionError(f"{source}: level {i} has no residual blocks")
        blocks.add(len(convs))
        widths.append(convs[0])
        if f"encoder.down.{i}.attn.0.q.weight" in state:
            enc_attn.append(i)
    if len(blocks) != 1:
        raise ConversionError(f"{source}: levels have different numbers of residual blocks {sorted(blocks)}")
    dec_attn = sorted({int(m[1]) for k in state if (m := re.match(r"decoder\.up\.(\d+)\.attn\.", k))})
    return taming_config(
        source, conv_in.shape[0], widths, enc_attn, dec_attn, resolution, codebook.shape[0], l2_normalize,
        num_res_blocks=blocks.pop(), mid_attention="encoder.mid.attn_1.q.weight" in state,
        num_groups=num_groups, **sizes,
    )


def check_group_norms(model: torch.nn.Module, num_groups: int, source: str) -> None:
    """Our ``group_norm`` uses fewer groups when a width is not divisible; the source never does. Refuse a model
    whose layers would silently differ."""
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.GroupNorm) and mod.num_groups != num_groups:
            raise ConversionError(f"{source}: layer {name} has {mod.num_channels} channels, not divisible "
                                  f"into {num_groups} groups")


def build_model(config: ModelConfig, state: dict[str, torch.Tensor], source: str):
    """Our :class:`VQModel` for ``config`` with ``state`` loaded strictly (eval mode), except our quantizer's
    bookkeeping buffers (usage counters, the k-means flag): foreign files lack them, they stay fresh."""
    model = VQModel(config)
    check_group_norms(model, config.num_groups, source)
    own = model.state_dict()
    fresh = {k: own[k] for k, _ in model.named_buffers() if k in own and k.startswith("quantize.")}
    try:
        load_state_dict_strict(model, {**fresh, **state}, source=source)
    except ConfigError as e:
        raise ConversionError(str(e)) from None
    return model.eval()
