"""Single-head spatial self-attention block (taming-transformers' ``AttnBlock``), computed with
``scaled_dot_product_attention`` so that fused kernels (flash / memory-efficient) are used where available."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vqgan.layers.resnet import group_norm


class AttnBlock(nn.Module):
    """``x + proj_out(attention(q, k, v))`` over all ``H * W`` positions, one head of width ``C``."""

    def __init__(self, channels: int, num_groups: int = 32):
        super().__init__()
        self.norm = group_norm(channels, num_groups)
        # Separate 1x1 convs (not one fused qkv) so that taming / diffusers checkpoints map one to one.
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (rearrange(f(n), "b c h w -> b 1 (h w) c") for f in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = rearrange(out, "b 1 (h w) c -> b c h w", h=h, w=w)
        return x + self.proj_out(out)
