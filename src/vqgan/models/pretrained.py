"""Our own weight format: a folder with ``config.json`` (the :class:`ModelConfig`) and ``model.safetensors``.

Loading never executes code from a file: the config is JSON, the tensors are safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vqgan.config import ConfigError, ModelConfig, from_dict, to_dict

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def save_pretrained(model: torch.nn.Module, directory: str | Path) -> Path:
    """Write ``model`` (a :class:`~vqgan.models.VQModel`) to ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_NAME).write_text(json.dumps(to_dict(model.config), indent=2))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = directory / (WEIGHTS_NAME + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "library": "vqgan"})
    tmp.replace(directory / WEIGHTS_NAME)
    return directory


def from_pretrained(directory: str | Path, map_location: str | torch.device = "cpu"):
    """Load a folder written by :func:`save_pretrained` into a :class:`~vqgan.models.VQModel`."""
    from vqgan.models.autoencoder import VQModel

    directory = Path(directory)
    cfg_path, weights = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for p in (cfg_path, weights):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: a pretrained folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    config = from_dict(ModelConfig, json.loads(cfg_path.read_text()))
    model = VQModel(config)
    state = load_file(str(weights), device=str(map_location))
    load_state_dict_strict(model, state, source=str(weights))
    return model.eval()


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
