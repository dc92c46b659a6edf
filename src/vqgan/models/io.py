"""Reading checkpoint files and building the models they hold, with torch only (no Lightning).

A training checkpoint (``.ckpt``, written by ``vqgan fit`` or ``vqgan fit-prior``) is a ``torch.save`` zip of
plain tensors and containers; it is read with ``weights_only=True``, so a file that would need to execute code is
refused. A missing, empty, truncated or corrupt file, a file that is not a checkpoint at all, and a checkpoint of
the other kind (a prior given where a tokenizer is expected, or the reverse) each get an error that names the file,
says what it is and which command it belongs to.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any, Literal

import torch

from vqgan.config import ConfigError, ExperimentConfig, from_dict

CheckpointKind = Literal["tokenizer", "prior", "unknown"]
TRAINING_KEYS = ("state_dict", "global_step", "optimizer_states", "loops")

# What each kind of file is, and the commands that read it (for the wrong-kind errors).
_KIND_TEXT = {
    "tokenizer": "a stage-1 tokenizer checkpoint (written by `vqgan fit`); it belongs to `vqgan reconstruct`, "
    "`encode`, `evaluate`, `convert`, or `vqgan sample --tokenizer`",
    "prior": "a stage-2 prior checkpoint (written by `vqgan fit-prior`); it belongs to `vqgan sample --prior`",
}
# First bytes of files that users pass by mistake.
_MAGIC = {
    b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image", b"RIFF": "a RIFF (WebP/AVI) file",
    b"\x1a\x45\xdf\xa3": "a Matroska/WebM video", b"\x93NUMPY": "a numpy .npy array",
}


class CheckpointError(RuntimeError):
    """A checkpoint that can't be used: missing, truncated, corrupt, unsafe, of the wrong kind or incompatible."""


def describe_file(path: str | Path) -> str | None:
    """A short guess of what a file that ``torch.load`` can't read is, from its first bytes (``None``: binary data
    of no known format, such as a damaged checkpoint)."""
    with open(path, "rb") as f:
        head = f.read(16)
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            return what
    if head[4:8] == b"ftyp":
        return "an MP4/MOV video"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "a safetensors file (weights without a config: use a pretrained folder with its config.json)"
    try:
        text = Path(path).read_bytes()[:4096].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return "a JSON file" if text.lstrip().startswith(("{", "[")) else "a text file (YAML, CSV or similar)"


def not_a_checkpoint_message(path: str | Path) -> str:
    """The error for a file that is not a PyTorch checkpoint at all: what it looks like, and what to pass."""
    what = describe_file(path)
    if what is None or what.startswith(("a text", "a JSON")):  # maybe a damaged checkpoint: don't rule it out
        looks = "its first bytes match no known format" if what is None else f"it looks like {what}"
        return f"checkpoint {path} is corrupt or truncated, or not a PyTorch checkpoint: {looks}"
    return (f"{path} is not a PyTorch checkpoint: it looks like {what}. Pass a `.ckpt` written by "
            "`vqgan fit` / `vqgan fit-prior`, a pretrained folder, or (for `vqgan convert`) a taming .ckpt, "
            "a LlamaGen .pt or a diffusers folder")


def looks_like_torch_file(path: str | Path) -> bool:
    """Starts like a zip (what ``torch.save`` writes, even when truncated) or a legacy pickle (protocol 2+
    starts with ``0x80``)."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith((b"PK\x03\x04", b"\x80"))


def unusable_file(path: Path) -> str | None:
    """Why ``path`` can't be a checkpoint before reading it (missing, empty, another kind of file), or ``None``."""
    if not path.is_file():
        return f"checkpoint {path} does not exist"
    if path.stat().st_size == 0:
        return f"checkpoint {path} is empty (0 bytes): probably a write that was interrupted"
    return None if looks_like_torch_file(path) else not_a_checkpoint_message(path)


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; raise :class:`CheckpointError` naming the file otherwise.

    ``mmap=True`` maps the tensors' storage instead of reading it (cheap when only the metadata is wanted)."""
    path = Path(path)
    if why := unusable_file(path):
        raise CheckpointError(why)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refusing to load {path}: it needs to execute code to unpickle ({str(e).splitlines()[0]}). "
            "Only plain tensors and containers are accepted (weights_only=True)."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {str(e).splitlines()[0]}") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a dict (got {type(ckpt).__name__})")
    return ckpt


def verify_checkpoint(path: str | Path, training: bool = True) -> dict[str, Any]:
    """Load ``path`` after checking every stored record against its CRC-32, and return it.

    ``torch.load`` reads tensor bytes without checking them, so a bit flip on disk would load silently; the zip
    container that ``torch.save`` writes records a CRC-32 per record, which :meth:`zipfile.ZipFile.testzip` checks.
    With ``training=True`` the file must also hold a Lightning training state (``TRAINING_KEYS``).

    Raises:
        CheckpointError: naming the file and what is wrong with it.
    """
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
    if training:
        missing = [k for k in TRAINING_KEYS if k not in ckpt]
        if missing:
            raise CheckpointError(f"checkpoint {path} holds no training state to resume from (missing {missing})")
    return ckpt


def load_state_dict_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if own[k].shape != state[k].shape
    )
    if missing or unexpected or shapes:
        parts = [f"{source} does not match the model:"]
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if keys:
                more = f" (+{len(keys) - 20} more)" if len(keys) > 20 else ""
                parts.append(f"  {name}: {', '.join(keys[:20])}{more}")
        raise ConfigError("\n".join(parts))
    model.load_state_dict(state, strict=True)


def checkpoint_kind(ckpt: dict[str, Any]) -> CheckpointKind:
    """``tokenizer`` (stage 1: its config has a loss and a discriminator), ``prior`` (stage 2: token metadata and
    a GPT / MaskGIT model), or ``unknown``."""
    hp = ckpt.get("hyper_parameters")
    cfg = hp.get("config") if isinstance(hp, dict) else None
    if not isinstance(cfg, dict):
        return "unknown"
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    if "tokens" in hp or model.get("kind") in ("gpt", "maskgit"):
        return "prior"
    if "loss" in cfg or "discriminator" in cfg or "quantizer" in model:
        return "tokenizer"
    return "unknown"


def _expect_kind(ckpt: dict[str, Any], expected: CheckpointKind, path: str | Path) -> None:
    kind = checkpoint_kind(ckpt)
    if kind == expected:
        return
    wanted = "a stage-1 tokenizer checkpoint (`vqgan fit`)" if expected == "tokenizer" else \
        "a stage-2 prior checkpoint (`vqgan fit-prior`)"
    if kind == "unknown":
        keys = sorted(map(str, ckpt))[:10]
        raise CheckpointError(f"{path} is not a vqgan training checkpoint (no hyper_parameters.config; entries: "
                              f"{keys}); expected {wanted}. Other formats: `vqgan convert` them first")
    raise CheckpointError(f"{path} is {_KIND_TEXT[kind]}; this needs {wanted}")


def experiment_from_checkpoint(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> ExperimentConfig:
    """The :class:`ExperimentConfig` stored in a stage-1 training checkpoint."""
    _expect_kind(ckpt, "tokenizer", path)
    return from_dict(ExperimentConfig, ckpt["hyper_parameters"]["config"])


def _submodule_state(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``model.*`` entries of a Lightning state dict, without that prefix nor ``torch.compile``'s."""
    return {k[len("model.") :].replace("_orig_mod.", ""): v for k, v in state_dict.items() if k.startswith("model.")}


def load_model(path: str | Path, map_location: str = "cpu") -> tuple[torch.nn.Module, ExperimentConfig | None]:
    """The autoencoder (eval mode) from a training checkpoint (``.ckpt``) or a pretrained folder.

    Returns ``(model, experiment_config)``; the config is ``None`` for a pretrained folder.

    Raises:
        CheckpointError: unreadable file, not a checkpoint, or a prior checkpoint.
        ConfigError: weights that don't match the stored config.
    """
    from vqgan.models import build_model
    from vqgan.models.pretrained import from_pretrained

    path = Path(path)
    if path.is_dir():
        return from_pretrained(path, map_location), None
    ckpt = load_checkpoint_file(path, map_location)
    cfg = experiment_from_checkpoint(ckpt, path)
    model = build_model(cfg.model)
    load_state_dict_strict(model, _submodule_state(ckpt["state_dict"]), source=str(path))
    return model.eval(), cfg


def load_prior(path: str | Path, map_location: str = "cpu"):
    """A prior (eval mode) from a training checkpoint written by ``vqgan fit-prior``.

    Returns ``(model, PriorExperimentConfig, tokens_metadata)``.

    Raises:
        CheckpointError: unreadable file, not a checkpoint, or a stage-1 tokenizer checkpoint.
    """
    from vqgan.models.prior import PriorExperimentConfig, build_prior

    ckpt = load_checkpoint_file(path, map_location)
    _expect_kind(ckpt, "prior", path)
    hp = ckpt["hyper_parameters"]
    try:
        cfg = from_dict(PriorExperimentConfig, hp["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: the stored prior configuration is not valid here: {e}") from None
    model = build_prior(cfg.model)
    load_state_dict_strict(model, _submodule_state(ckpt["state_dict"]), source=str(path))
    return model.eval(), cfg, hp.get("tokens", {})
