"""Causal spatio-temporal blocks for video tokenizers on ``(B, C, T, H, W)`` tensors (MAGVIT-v2, Yu et al.
2023, https://arxiv.org/abs/2310.05737, section 3.2).

Output frame ``t`` depends on input frames ``<= t``: temporal convolutions are padded on the past side only,
normalisation is per frame (over time it would leak the future), temporal attention is masked causally. The
first frame is encoded on its own, as a still image, so one tokenizer handles images (``T = 1``) and videos.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vqgan.layers.attention import AttnBlock
from vqgan.layers.resnet import group_norm


class CausalConv3d(nn.Module):
    """3D convolution, ``kernel`` in time padded with ``kernel - 1`` copies of the first frame (past side only);
    spatial padding is symmetric (``kernel // 2``) unless ``spatial_stride == 2``, where taming's asymmetric
    ``(0, 1)`` padding keeps the output at exactly half the input size."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, time_stride: int = 1,
                 spatial_stride: int = 1):
        super().__init__()
        self.time_pad = kernel - 1
        self.asymmetric = spatial_stride == 2
        # Symmetric zero padding is left to the convolution itself (no extra copy of the activations).
        p = 0 if self.asymmetric else kernel // 2
        stride = (time_stride, spatial_stride, spatial_stride)
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride=stride, padding=(0, p, p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.time_pad:
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1), x], dim=2)
        if self.asymmetric:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


def per_frame(module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Apply a 2D ``module`` to every frame of ``(B, C, T, H, W)`` on its own (frames as a batch)."""
    y = module(rearrange(x, "b c t h w -> (b t) c h w"))
    return rearrange(y, "(b t) c h w -> b c t h w", b=x.shape[0])


class FrameGroupNorm(nn.Module):
    """GroupNorm applied to each frame on its own (statistics over ``C, H, W``, never over time)."""

    def __init__(self, channels: int, num_groups: int = 32):
        super().__init__()
        self.norm = group_norm(channels, num_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return per_frame(self.norm, x)


class ResBlock3d(nn.Module):
    """taming's residual block with causal 3x3x3 convolutions and per-frame GroupNorm."""

    def __init__(self, in_channels: int, out_channels: int | None = None, dropout: float = 0.0, num_groups: int = 32):
        super().__init__()
        out_channels = out_channels or in_channels
        self.norm1 = FrameGroupNorm(in_channels, num_groups)
        self.conv1 = CausalConv3d(in_channels, out_channels)
        self.norm2 = FrameGroupNorm(out_channels, num_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = CausalConv3d(out_channels, out_channels)
        self.shortcut = nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class SpatialAttention3d(nn.Module):
    """taming's spatial self-attention applied to every frame independently (causal by construction)."""

    def __init__(self, channels: int, num_groups: int = 32):
        super().__init__()
        self.attn = AttnBlock(channels, num_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return per_frame(self.attn, x)


class TemporalAttention(nn.Module):
    """Self-attention along time at every spatial position, with a causal mask (frame ``t`` attends to frames
    ``<= t``), one head of width ``C``, residual."""

    def __init__(self, channels: int, num_groups: int = 32):
        super().__init__()
        self.norm = FrameGroupNorm(channels, num_groups)
        self.qkv = nn.Conv3d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv3d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)  # starts as the identity: training begins from a frame-wise model
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (n c) t h w -> n (b h w) 1 t c", n=3)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out = rearrange(out, "(b h w) 1 t c -> b c t h w", b=b, h=h, w=w)
        return x + self.proj_out(out)


class Downsample3d(nn.Module):
    """2x spatial and optionally 2x causal temporal downsampling by one strided causal 3x3x3 convolution:
    with ``temporal``, ``T = 1 + 2k`` frames become ``1 + k`` (output ``j`` sees frames ``2j - 2 .. 2j``)."""

    def __init__(self, channels: int, temporal: bool):
        super().__init__()
        self.temporal = temporal
        self.conv = CausalConv3d(channels, channels, 3, time_stride=2 if temporal else 1, spatial_stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.temporal and (x.shape[2] - 1) % 2:
            raise ValueError(f"temporal downsampling needs 1 + 2k frames, got {x.shape[2]}")
        return self.conv(x)


class Upsample3d(nn.Module):
    """2x spatial (nearest + conv) and optionally 2x temporal upsampling, the inverse shape map of
    :class:`Downsample3d`: a causal conv makes ``2C`` channels, they become two frames each (depth-to-time), and
    the first output frame is dropped, so ``1 + k`` latent frames give ``1 + 2k`` frames (MAGVIT-v2)."""

    def __init__(self, channels: int, temporal: bool):
        super().__init__()
        self.temporal = temporal
        if temporal:
            self.time_conv = CausalConv3d(channels, 2 * channels, 3)
        self.conv = CausalConv3d(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.temporal:
            x = rearrange(self.time_conv(x), "b (s c) t h w -> b c (t s) h w", s=2)[:, :, 1:]
        return self.conv(per_frame(lambda f: F.interpolate(f, scale_factor=2.0, mode="nearest"), x))
