"""Stage-1 tokenizers (image and video), discriminators; the stage-2 priors live in :mod:`vqgan.models.prior`."""

from vqgan.config import ModelConfig
from vqgan.models.autoencoder import BaseVQModel, Decoder, Encoder, VQModel
from vqgan.models.discriminator import PatchDiscriminator
from vqgan.models.outputs import EncodeOutput, VQModelOutput
from vqgan.models.video import VideoVQModel, reconstruct_video


def build_model(cfg: ModelConfig) -> VQModel | VideoVQModel:
    """The stage-1 autoencoder for ``cfg.arch``: :class:`VideoVQModel` (``video3d``) or :class:`VQModel`."""
    return VideoVQModel(cfg) if cfg.arch == "video3d" else VQModel(cfg)


__all__ = [
    "BaseVQModel", "Decoder", "EncodeOutput", "Encoder", "PatchDiscriminator", "VQModel", "VQModelOutput",
    "VideoVQModel", "build_model", "reconstruct_video",
]
