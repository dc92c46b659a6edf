"""Reading checkpoint files (``weights_only=True``: a file that would execute code is refused) and building
the models they hold, with torch only (no Lightning). A bad file gets an error that names it, says what it is
and which command it belongs to."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from vqgan.config import ConfigError, ExperimentConfig, from_dict

TRAINING_KEYS = ("state_dict", "global_step", "optimizer_states", "loops")

# Each kind of checkpoint: what it is, the command that writes it, and those that read it (wrong-kind errors).
_KINDS = {
    "tokenizer": ("a stage-1 tokenizer checkpoint", "`vqgan fit`",
                  "`vqgan reconstruct`, `encode`, `evaluate`, `convert`, or `vqgan sample --tokenizer`"),
    "prior": ("a stage-2 prior checkpoint", "`vqgan fit-prior`", "`vqgan sample --prior`"),
}
# (offset, bytes) at the start of files that users pass by mistake.
_MAGIC = {
    (0, b"\x89PNG"): "a PNG image", (0, b"\xff\xd8\xff"): "a JPEG image", (0, b"GIF8"): "a GIF image",
    (0, b"RIFF"): "a RIFF (WebP/AVI) file", (0, b"\x1a\x45\xdf\xa3"): "a Matroska/WebM video",
    (0, b"\x93NUMPY"): "a numpy .npy array", (4, b"ftyp"): "an MP4/MOV video",
}


class CheckpointError(RuntimeError):
    """A checkpoint that can't be used: missing, truncated, corrupt, unsafe, of the wrong kind or incompatible."""


def _describe(path: Path, head: bytes) -> str | None:
    """What a file looks like from its first bytes (``None``: binary of no known format, e.g. damaged)."""
    for (offset, magic), what in _MAGIC.items():
        if head[offset:].startswith(magic):
            return what
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "a safetensors file (weights without a config: use a pretrained folder with its config.json)"
    try:
        text = path.read_bytes()[:4096].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return "a JSON file" if text.lstrip().startswith(("{", "[")) else "a text file (YAML, CSV or similar)"


def unusable_file(path: Path) -> str | None:
    """Why ``path`` can't be a checkpoint before reading it (missing, empty, another kind of file), or ``None``."""
    if not path.is_file():
        return f"checkpoint {path} does not exist"
    if path.stat().st_size == 0:
        return f"checkpoint {path} is empty (0 bytes): probably a write that was interrupted"
    with open(path, "rb") as f:
        head = f.read(16)
    # A zip (what torch.save writes, even when truncated) or a legacy pickle (protocol 2+ starts with 0x80).
    if head.startswith((b"PK\x03\x04", b"\x80")):
        return None
    what = _describe(path, head)
    if what is None or what.startswith(("a text", "a JSON")):  # maybe a damaged checkpoint: don't rule it out
        looks = "its first bytes match no known format" if what is None else f"it looks like {what}"
        return f"checkpoint {path} is corrupt or truncated, or not a PyTorch checkpoint: {looks}"
    return (f"{path} is not a PyTorch checkpoint: it looks like {what}. Pass a `.ckpt` written by "
            "`vqgan fit` / `vqgan fit-prior`, a pretrained folder, or (for `vqgan convert`) a taming .ckpt, "
            "a LlamaGen .pt or a diffusers folder")


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; raise :class:`CheckpointError` naming the file otherwise.
    ``mmap=True`` maps the tensors' storage instead of reading it (cheap when only the metadata is wanted)."""
    path = Path(path)
    if why := unusable_file(path):
        raise CheckpointError(why)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"refusing to load {path}: it needs to execute code to unpickle "
                              f"({str(e).splitlines()[0]}). Only plain tensors and containers are accepted "
                              "(weights_only=True).") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {str(e).splitlines()[0]}") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a dict (got {type(ckpt).__name__})")
    return ckpt


def verify_checkpoint(path: str | Path, training: bool = True) -> dict[str, Any]:
    """Load ``path`` once its zip records match their CRC-32 (``torch.load`` loads a bit flip silently) and,
    with ``training=True``, it holds a Lightning training state; else :class:`CheckpointError` naming it."""
    path = Path(path)
    if why := unusable_file(path):
        raise CheckpointError(why)
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: not a torch zip archive")
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {e}") from None
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is corrupt: record {bad!r} fails its CRC-32 check")
    ckpt = load_checkpoint_file(path, mmap=True)  # the bytes were just read by the CRC check
    if training and (missing := [k for k in TRAINING_KEYS if k not in ckpt]):
        raise CheckpointError(f"checkpoint {path} holds no training state to resume from (missing {missing})")
    return ckpt


def load_state_dict_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    shapes = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if own[k].shape != state[k].shape)
    problems = {"missing": sorted(set(own) - set(state)), "unexpected": sorted(set(state) - set(own)),
                "shape mismatch": shapes}
    if any(problems.values()):
        parts = [f"{source} does not match the model:"]
        for name, keys in problems.items():
            if keys:
                more = f" (+{len(keys) - 20} more)" if len(keys) > 20 else ""
                parts.append(f"  {name}: {', '.join(keys[:20])}{more}")
        raise ConfigError("\n".join(parts))
    model.load_state_dict(state, strict=True)


def _checkpoint_of_kind(path: str | Path, map_location: str, expected: str) -> dict[str, Any]:
    """The checkpoint at ``path``, which must be of the ``expected`` kind (``tokenizer`` or ``prior``)."""
    ckpt = load_checkpoint_file(path, map_location)
    hp = ckpt.get("hyper_parameters")
    cfg = hp.get("config") if isinstance(hp, dict) else None
    kind = "unknown"
    if isinstance(cfg, dict):
        model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
        if "tokens" in hp or model.get("kind") in ("gpt", "maskgit"):
            kind = "prior"
        elif "loss" in cfg or "discriminator" in cfg or "quantizer" in model:
            kind = "tokenizer"
    what, writer, _ = _KINDS[expected]
    if kind == "unknown":
        keys = sorted(map(str, ckpt))[:10]
        raise CheckpointError(f"{path} is not a vqgan training checkpoint (no hyper_parameters.config; "
                              f"entries: {keys}); expected {what} ({writer}). Other formats: `vqgan convert` "
                              "them first")
    if kind != expected:
        is_what, is_writer, readers = _KINDS[kind]
        raise CheckpointError(f"{path} is {is_what} (written by {is_writer}); it belongs to {readers}; "
                              f"this needs {what} ({writer})")
    return ckpt


def _load_weights(model: torch.nn.Module, ckpt: dict[str, Any], path: str | Path) -> torch.nn.Module:
    """``model`` (eval mode) with the ``model.*`` entries of a Lightning state dict (prefixes stripped)."""
    items = ckpt["state_dict"].items()
    state = {k[len("model.") :].replace("_orig_mod.", ""): v for k, v in items if k.startswith("model.")}
    load_state_dict_strict(model, state, source=str(path))
    return model.eval()


def load_model(path: str | Path, map_location: str = "cpu") -> tuple[torch.nn.Module, ExperimentConfig | None]:
    """``(model, experiment_config)``: the autoencoder (eval mode) from a training checkpoint or a pretrained
    folder (config ``None``); raises :class:`CheckpointError` (bad file) or :class:`ConfigError` (weights)."""
    from vqgan.models import build_model
    from vqgan.models.pretrained import from_pretrained

    if Path(path).is_dir():
        return from_pretrained(path, map_location), None
    ckpt = _checkpoint_of_kind(path, map_location, "tokenizer")
    cfg = from_dict(ExperimentConfig, ckpt["hyper_parameters"]["config"])
    return _load_weights(build_model(cfg.model), ckpt, path), cfg


def load_prior(path: str | Path, map_location: str = "cpu"):
    """``(model, PriorExperimentConfig, tokens_metadata)``: a prior (eval mode) from a ``vqgan fit-prior``
    checkpoint. Raises :class:`CheckpointError` (unreadable file, not a checkpoint, a tokenizer's)."""
    from vqgan.models.prior import PriorExperimentConfig, build_prior

    ckpt = _checkpoint_of_kind(path, map_location, "prior")
    hp = ckpt["hyper_parameters"]
    try:
        cfg = from_dict(PriorExperimentConfig, hp["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: the stored prior configuration is not valid here: {e}") from None
    return _load_weights(build_prior(cfg.model), ckpt, path), cfg, hp.get("tokens", {})
