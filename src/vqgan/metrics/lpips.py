"""LPIPS as an evaluation metric (Zhang et al. 2018, https://arxiv.org/abs/1801.03924), on a backbone read
from a local file: unlike the training loss, no ``random_backbone`` (that number would mean nothing)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vqgan.losses.perceptual import BACKBONE_FILES, LPIPS, backbone_help, resolve_weights_file
from vqgan.metrics.reconstruction import per_clip

# Smallest side the backbone's pooling accepts (AlexNet: stride-4 stem, two 3x3/2 max-pools; VGG16: 4 x 2x2).
MIN_SIDE = {"alex": 32, "vgg": 16}


def lpips_weights_help(net: str, path: str | None = None) -> str:
    """How to get the LPIPS backbone file, for error messages."""
    return backbone_help(net, path, f"LPIPS ({net})", f"--lpips-weights /path/to/{{file}} --lpips-net {net}",
                         "Nothing is downloaded at run time, and LPIPS is never computed with a random backbone.")


class LPIPSMetric(nn.Module):
    """Per-image LPIPS distance ``(B,)`` between images in [-1, 1], on ``net`` ``vgg`` (the usual choice for
    tokenizer papers) or ``alex`` (the LPIPS paper's default), whose torchvision state dict file is
    ``weights`` (``None``: torch's hub cache; missing: ``BackboneWeightsMissing``)."""

    def __init__(self, net: str = "vgg", weights: str | Path | None = None):
        super().__init__()
        if net not in BACKBONE_FILES:
            raise ValueError(f"LPIPS backbone must be one of {sorted(BACKBONE_FILES)}, got {net!r}")
        path = None if weights is None else str(weights)
        self.weights_file = resolve_weights_file(path, BACKBONE_FILES[net], partial(lpips_weights_help, net))
        self.net, self.min_side = net, MIN_SIDE[net]
        self.lpips = LPIPS(net, str(self.weights_file))

    @torch.no_grad()
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5:  # videos (B, C, T, H, W): score frames, average per clip
            return per_clip(self.forward, x, y)
        x, y = x.float().clamp(-1, 1), y.float().clamp(-1, 1)
        if min(x.shape[-2:]) < self.min_side:
            # Too small for the backbone: bilinear upsampling to a min_side shorter side (in the protocol).
            f = self.min_side / min(x.shape[-2:])
            size = (round(x.shape[-2] * f), round(x.shape[-1] * f))
            x, y = (F.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in (x, y))
        return self.lpips(x, y)
