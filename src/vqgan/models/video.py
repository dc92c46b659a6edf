"""Video tokenizers: the causal spatio-temporal VQGAN, and frame-wise tokenization with any image model."""

from __future__ import annotations

import torch
from torch import nn

from vqgan.config import ModelConfig
from vqgan.models.autoencoder import BaseVQModel, Decoder, Encoder


class VideoVQModel(BaseVQModel):
    """Causal spatio-temporal VQGAN (``arch="video3d"``) after MAGVIT-v2 (Yu et al. 2023,
    https://arxiv.org/abs/2310.05737), with :class:`~vqgan.models.VQModel`'s interface. Clips of ``1 + k * s``
    frames (``s = 2 ** temporal_downsample``) become ``1 + k`` latent frames, indices ``(B, t, h, w)``; the
    first encodes the first frame alone; frame ``t`` never changes latent frames ``j`` with ``j * s < t``."""

    def __init__(self, config: ModelConfig):
        if config.arch != "video3d":
            raise ValueError(f"VideoVQModel needs model.arch='video3d', got {config.arch!r}")
        super().__init__(config, Encoder(config, video=True), Decoder(config, video=True), nn.Conv3d)

    @property
    def time_factor(self) -> int:
        return self.config.time_factor

    def latent_frames(self, frames: int) -> int:
        """Latent frames of a clip of ``frames`` frames (which must be ``1 + k * time_factor``)."""
        s = self.time_factor
        if frames < 1 or (frames - 1) % s:
            raise ValueError(f"clips must have 1 + k * {s} frames for model.temporal_downsample="
                             f"{self.config.temporal_downsample}; got {frames}")
        return 1 + (frames - 1) // s

    def _prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:  # a batch of images is a batch of one-frame clips
            x = x.unsqueeze(2)
        if x.dim() != 5:
            raise ValueError(f"expected a video batch (B, C, T, H, W), got shape {tuple(x.shape)}")
        self.latent_frames(x.shape[2])
        return x

    def _match_input(self, reconstruction: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return reconstruction.squeeze(2) if x.dim() == 4 else reconstruction  # images in, images out


@torch.no_grad()
def reconstruct_video(
    model: nn.Module, video: torch.Tensor, frames_per_batch: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(reconstruction, indices)`` of a clip ``(C, T, H, W)`` in [-1, 1]. An image model tokenizes every
    frame on its own (seed 000), ``frames_per_batch`` at a time; a :class:`VideoVQModel` tokenizes the clip,
    and frames beyond the last full ``1 + k * time_factor`` are dropped (the output may be shorter)."""
    model.eval()
    if isinstance(model, VideoVQModel):
        s = model.time_factor
        out = model(video[None, :, : 1 + (video.shape[1] - 1) // s * s])
        return out.reconstruction[0].clamp(-1, 1), out.indices[0]
    recs, idx = [], []
    for chunk in video.transpose(0, 1).split(frames_per_batch):  # frames (T, C, H, W)
        out = model(chunk)
        recs.append(out.reconstruction.clamp(-1, 1))
        idx.append(out.indices)
    return torch.cat(recs).transpose(0, 1), torch.cat(idx)
