"""Video tokenizers.

:class:`VideoVQModel` (``ModelConfig.arch="video3d"``) is a spatio-temporal VQGAN: taming's encoder/decoder layout
with causal 3D convolutions, per-frame normalisation, causal temporal attention and causal temporal
downsampling, after MAGVIT-v2 (Yu et al. 2023, https://arxiv.org/abs/2310.05737). Clips of ``1 + k * s`` frames
(``s = 2 ** temporal_downsample``) become ``1 + k`` latent frames; the first latent frame encodes the first frame
alone, and changing frame ``t`` never changes the codes of latent frames ``j`` with ``j * s < t``.

Frame-wise tokenization with any image model is :func:`reconstruct_video`, which folds time into the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vqgan.config import ModelConfig
from vqgan.layers.conv3d import (
    CausalConv3d,
    Downsample3d,
    FrameGroupNorm,
    ResBlock3d,
    SpatialAttention3d,
    TemporalAttention,
    Upsample3d,
)
from vqgan.models.autoencoder import BaseVQModel
from vqgan.quantizers import Quantizer, build_quantizer


def _temporal_levels(cfg: ModelConfig) -> list[bool]:
    """Which of the ``len(ch_mult) - 1`` downsampling steps also halve time: the last ``temporal_downsample``
    (the coarse levels, as MAGVIT-v2 does, so that fine spatial detail is extracted at the full frame rate)."""
    n = len(cfg.ch_mult) - 1
    if cfg.temporal_downsample > n:
        raise ValueError(
            f"model.temporal_downsample={cfg.temporal_downsample} exceeds the {n} downsampling steps of "
            f"model.ch_mult={cfg.ch_mult}"
        )
    return [i >= n - cfg.temporal_downsample for i in range(n)]


class _Mid3d(nn.Module):
    def __init__(self, ch: int, cfg: ModelConfig):
        super().__init__()
        g = cfg.num_groups
        self.block_1 = ResBlock3d(ch, ch, cfg.dropout, g)
        self.attn_1 = SpatialAttention3d(ch, g) if cfg.mid_attention else nn.Identity()
        self.temporal_attn = TemporalAttention(ch, g) if cfg.temporal_attention else nn.Identity()
        self.block_2 = ResBlock3d(ch, ch, cfg.dropout, g)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.temporal_attn(self.attn_1(self.block_1(h))))


class _Level3d(nn.Module):
    def __init__(self, blocks: list[nn.Module], attn: list[nn.Module], resample: nn.Module | None):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attn)
        self.resample = resample

    def forward(self, h: torch.Tensor, resample_first: bool = False) -> torch.Tensor:
        if resample_first and self.resample is not None:
            h = self.resample(h)
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        if not resample_first and self.resample is not None:
            h = self.resample(h)
        return h


class VideoEncoder(nn.Module):
    """Causal 3D encoder: ``(B, C, T, H, W) -> (B, z_channels, 1 + (T - 1) / s, H / f, W / f)``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        ch, g, res = cfg.ch, cfg.num_groups, cfg.resolution
        temporal = _temporal_levels(cfg)
        self.conv_in = CausalConv3d(cfg.in_channels, ch)
        in_mult = (1, *cfg.ch_mult)
        levels = []
        for i, mult in enumerate(cfg.ch_mult):
            block_in, block_out = ch * in_mult[i], ch * mult
            blocks, attn = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock3d(block_in, block_out, cfg.dropout, g))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    attn.append(SpatialAttention3d(block_in, g))
            last = i == len(cfg.ch_mult) - 1
            levels.append(_Level3d(blocks, attn, None if last else Downsample3d(block_in, temporal[i])))
            res = res if last else res // 2
        self.down = nn.ModuleList(levels)
        self.mid = _Mid3d(block_in, cfg)
        self.norm_out = FrameGroupNorm(block_in, g)
        self.conv_out = CausalConv3d(block_in, cfg.z_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class VideoDecoder(nn.Module):
    """Mirror of :class:`VideoEncoder` (``num_res_blocks + 1`` blocks per level), causal as well."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        ch, g = cfg.ch, cfg.num_groups
        temporal = _temporal_levels(cfg)
        block_in = ch * cfg.ch_mult[-1]
        res = cfg.latent_resolution
        self.conv_in = CausalConv3d(cfg.z_channels, block_in)
        self.mid = _Mid3d(block_in, cfg)
        levels = []
        for i in reversed(range(len(cfg.ch_mult))):
            block_out = ch * cfg.ch_mult[i]
            blocks, attn = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResBlock3d(block_in, block_out, cfg.dropout, g))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    attn.append(SpatialAttention3d(block_in, g))
            up = Upsample3d(block_in, temporal[i - 1]) if i != 0 else None
            levels.append(_Level3d(blocks, attn, up))
            res = res * 2 if i != 0 else res
        self.up = nn.ModuleList(levels)
        self.norm_out = FrameGroupNorm(block_in, g)
        self.conv_out = CausalConv3d(block_in, cfg.out_channels or cfg.in_channels)

    @property
    def last_layer(self) -> torch.Tensor:
        return self.conv_out.conv.weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in self.up:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VideoVQModel(BaseVQModel):
    """Causal spatio-temporal VQGAN: encoder, 1x1x1 ``quant_conv``, quantizer over ``(B, D, t, h, w)``,
    ``post_quant_conv``, decoder. Same interface and typed outputs as :class:`~vqgan.models.VQModel`; indices are
    ``(B, t, h, w)``. ``decode_codes(encode(x).indices)`` equals ``forward(x).reconstruction`` in eval mode.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.arch != "video3d":
            raise ValueError(f"VideoVQModel needs model.arch='video3d', got {config.arch!r}")
        self.config = config
        self.encoder, self.decoder = VideoEncoder(config), VideoDecoder(config)
        self.quant_conv = nn.Conv3d(config.z_channels, config.embed_dim, 1)
        self.quantize: Quantizer = build_quantizer(config.quantizer, config.embed_dim)
        self.post_quant_conv = nn.Conv3d(config.embed_dim, config.z_channels, 1)

    @property
    def time_factor(self) -> int:
        return self.config.time_factor

    def latent_frames(self, frames: int) -> int:
        """Latent frames of a clip of ``frames`` frames (which must be ``1 + k * time_factor``)."""
        s = self.time_factor
        if frames < 1 or (frames - 1) % s:
            raise ValueError(f"clips must have 1 + k * {s} frames for model.temporal_downsample={self.config.temporal_downsample}; got {frames}")
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
def reconstruct_video(model: nn.Module, video: torch.Tensor, frames_per_batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstruct a clip ``(C, T, H, W)`` in [-1, 1] with either kind of tokenizer; returns ``(reconstruction,
    indices)``.

    An image model tokenizes every frame on its own (frame-wise tokenization, seed 000), in batches of
    ``frames_per_batch``. A :class:`VideoVQModel` tokenizes the clip; frames beyond the last full
    ``1 + k * time_factor`` are dropped from the output (the reconstruction may be shorter than the input).
    """
    model.eval()
    if isinstance(model, VideoVQModel):
        s = model.time_factor
        t = 1 + (video.shape[1] - 1) // s * s
        out = model(video[None, :, :t])
        return out.reconstruction[0].clamp(-1, 1), out.indices[0]
    frames = video.transpose(0, 1)  # (T, C, H, W)
    recs, idx = [], []
    for chunk in frames.split(frames_per_batch):
        out = model(chunk)
        recs.append(out.reconstruction.clamp(-1, 1))
        idx.append(out.indices)
    return torch.cat(recs).transpose(0, 1), torch.cat(idx)
