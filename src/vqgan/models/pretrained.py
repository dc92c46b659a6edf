"""Our own weight format, loadable without training code or running code from a file (unlike
``PyTorchModelHubMixin``'s, its nested config is validated by :func:`~vqgan.config.from_dict`)::

    my-tokenizer/
      config.json          {"arch": "taming", "ch": 128, "ch_mult": [1, 1, 2, 2, 4], ..., "quantizer": {...}}
      model.safetensors    encoder.*, quant_conv.*, quantize.embedding.weight, post_quant_conv.*, decoder.*
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from huggingface_hub import ModelHubMixin
from safetensors.torch import load_file, save_file

from vqgan.config import ModelConfig, from_dict, to_dict
from vqgan.models import VQModel, build_model
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
    """Load a folder written by :func:`save_pretrained` into the model its config names (or ``model_cls``, a
    subclass of :class:`~vqgan.models.VQModel` taking the same config)."""
    cfg_path, weights = Path(directory) / CONFIG_NAME, Path(directory) / WEIGHTS_NAME
    for p in (cfg_path, weights):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: a pretrained folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    config = from_dict(ModelConfig, json.loads(cfg_path.read_text()))
    model = model_cls(config) if model_cls is not None else build_model(config)
    load_state_dict_strict(model, load_file(str(weights), device=str(map_location)), source=str(weights))
    return model.eval()


class HubVQModel(
    ModelHubMixin, VQModel, library_name="vqgan", tags=["vqgan", "image-tokenizer", "vector-quantization"]
):
    """:class:`~vqgan.models.VQModel` with the Hugging Face hub mixin: ``save_pretrained(dir,
    push_to_hub=True, repo_id=...)`` writes our folder format (plus a model card) and uploads it;
    ``from_pretrained("user/repo")`` downloads it or reads a local folder offline; see :meth:`from_model`."""

    def _save_pretrained(self, save_directory: Path) -> None:
        save_pretrained(self, save_directory)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, map_location: str = "cpu", **hub) -> HubVQModel:
        folder = Path(model_id)
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            names = ("revision", "cache_dir", "force_download", "local_files_only", "token")  # the mixin's
            kwargs = {k: hub[k] for k in names if k in hub}
            files = [CONFIG_NAME, WEIGHTS_NAME]
            folder = Path(snapshot_download(repo_id=model_id, allow_patterns=files, **kwargs))
        return from_pretrained(folder, map_location, model_cls=cls)

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> HubVQModel:
        """A :class:`HubVQModel` holding a copy of ``model``'s config and weights."""
        out = cls(model.config)
        out.load_state_dict(model.state_dict(), strict=True)
        return out.train(model.training)
