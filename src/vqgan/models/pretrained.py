"""Our own weight format: a folder with ``config.json`` (the :class:`ModelConfig`) and ``model.safetensors``.

Kept rather than ``PyTorchModelHubMixin``'s format: its loader rebuilds a dataclass config one level deep
(``ModelConfig(quantizer=<dict>)``) and drops unknown keys silently, and reading it imports huggingface_hub; ours
validates the nested config with :func:`~vqgan.config.from_dict` and needs only safetensors.

Loading never executes code from a file: the config is JSON, the tensors are safetensors. The folder is
loadable without the training code (only :mod:`vqgan.models` is imported)::

    my-tokenizer/
      config.json          {"arch": "taming", "ch": 128, "ch_mult": [1, 1, 2, 2, 4], ..., "quantizer": {...}}
      model.safetensors    encoder.*, quant_conv.*, quantize.embedding.weight, post_quant_conv.*, decoder.*

:class:`HubVQModel` adds the Hugging Face hub mixin (``push_to_hub``, and ``from_pretrained`` of a hub repository
id) on top of the same files, for users who publish their tokenizers.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from huggingface_hub import ModelHubMixin
from safetensors.torch import load_file, save_file

from vqgan.config import ModelConfig, from_dict, to_dict
from vqgan.models.io import load_state_dict_strict

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


def from_pretrained(directory: str | Path, map_location: str | torch.device = "cpu", model_cls: type | None = None):
    """Load a folder written by :func:`save_pretrained` into a :class:`~vqgan.models.VQModel` (or ``model_cls``,
    a subclass taking the same config)."""
    from vqgan.models import build_model
    from vqgan.models.autoencoder import VQModel

    VQModel = model_cls or VQModel  # noqa: N806 - the class to instantiate
    directory = Path(directory)
    cfg_path, weights = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for p in (cfg_path, weights):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: a pretrained folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    config = from_dict(ModelConfig, json.loads(cfg_path.read_text()))
    model = VQModel(config) if model_cls is not None else build_model(config)
    state = load_file(str(weights), device=str(map_location))
    load_state_dict_strict(model, state, source=str(weights))
    return model.eval()


def _hub_base():
    from vqgan.models.autoencoder import VQModel

    return VQModel


class HubVQModel(
    ModelHubMixin,
    _hub_base(),
    library_name="vqgan",
    tags=["vqgan", "image-tokenizer", "vector-quantization"],
):
    """:class:`~vqgan.models.VQModel` with the Hugging Face hub mixin.

    ``save_pretrained(dir, push_to_hub=True, repo_id=...)`` writes our folder format (plus a model card
    ``README.md``) and uploads it; ``HubVQModel.from_pretrained("user/repo")`` downloads ``config.json`` and
    ``model.safetensors`` from the hub, or reads a local folder without any network access. Convert a trained
    model with :meth:`from_model`.
    """

    def _save_pretrained(self, save_directory: Path) -> None:
        save_pretrained(self, save_directory)

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
        map_location: str = "cpu",
        **kwargs,
    ) -> HubVQModel:
        folder = Path(model_id)
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            folder = Path(
                snapshot_download(
                    repo_id=model_id, revision=revision, cache_dir=cache_dir, force_download=force_download,
                    local_files_only=local_files_only, token=token, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME],
                )
            )
        return from_pretrained(folder, map_location, model_cls=cls)

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> HubVQModel:
        """A :class:`HubVQModel` holding a copy of ``model``'s config and weights."""
        out = cls(model.config)
        out.load_state_dict(model.state_dict(), strict=True)
        return out.train(model.training)
