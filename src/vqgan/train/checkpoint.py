"""Checkpoint files: atomic writes (temporary file, fsync, rename) and safe loads (``weights_only=True``).

A process killed while writing leaves the previous checkpoint intact; a truncated or corrupt file is reported
with its path instead of an unpickling traceback; a file that would need to execute code is refused.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


class CheckpointError(RuntimeError):
    """A checkpoint that can't be used: missing, truncated, corrupt, unsafe or incompatible."""


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, ``fsync``, then ``os.replace`` onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; raise :class:`CheckpointError` naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): probably a write that was interrupted")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint plugin: atomic saves and ``weights_only`` loads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint_file(path, map_location or "cpu")


def experiment_from_checkpoint(ckpt: dict[str, Any]):
    """The :class:`ExperimentConfig` stored in a training checkpoint."""
    from vqgan.config import ExperimentConfig, from_dict

    try:
        return from_dict(ExperimentConfig, ckpt["hyper_parameters"]["config"])
    except KeyError:
        raise CheckpointError("checkpoint has no vqgan configuration (hyper_parameters.config)") from None


def load_model(path: str | Path, map_location: str = "cpu"):
    """The autoencoder (eval mode) from a training checkpoint (``.ckpt``) or a pretrained folder.

    Returns ``(model, experiment_config_or_None)``.
    """
    from vqgan.models import build_model
    from vqgan.models.pretrained import from_pretrained, load_state_dict_strict

    path = Path(path)
    if path.is_dir():
        return from_pretrained(path, map_location), None
    ckpt = load_checkpoint_file(path, map_location)
    cfg = experiment_from_checkpoint(ckpt)
    model = build_model(cfg.model)
    state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    load_state_dict_strict(model, state, source=str(path))
    return model.eval(), cfg
