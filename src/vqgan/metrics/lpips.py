"""LPIPS as an evaluation metric (Zhang et al. 2018, https://arxiv.org/abs/1801.03924).

The network is the ``lpips`` package's own (its shipped linear calibration layers) through
:class:`vqgan.losses.perceptual.LPIPS`; the ImageNet backbone (torchvision's VGG16 or AlexNet) is read from a local
file. Unlike the training loss, the metric has no ``random_backbone`` switch on the command line: an LPIPS number
from a random backbone means nothing, so a missing file is an error naming the file (tests build the metric with a
backbone file they write themselves).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vqgan.losses.perceptual import BACKBONE_FILES, LPIPS, resolve_backbone_file


class LPIPSMetric(nn.Module):
    """Per-image LPIPS distance ``(B,)`` between images in [-1, 1].

    Args:
        net: ``vgg`` (the usual choice for tokenizer papers) or ``alex`` (the LPIPS paper's default).
        weights: torchvision state dict file of that backbone (``vgg16-397923af.pth`` / ``alexnet-owt-7be5be79.pth``);
            ``None`` looks in torch's hub cache. Missing: :class:`~vqgan.losses.perceptual.BackboneWeightsMissing`.
    """

    def __init__(self, net: str = "vgg", weights: str | Path | None = None):
        super().__init__()
        if net not in BACKBONE_FILES:
            raise ValueError(f"LPIPS backbone must be one of {sorted(BACKBONE_FILES)}, got {net!r}")
        self.weights_file = resolve_backbone_file(net, None if weights is None else str(weights))
        self.net = net
        self.lpips = LPIPS(net, str(self.weights_file))

    @torch.no_grad()
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5:  # videos (B, C, T, H, W): score frames, average per clip
            b = x.shape[0]
            x, y = (t.transpose(1, 2).flatten(0, 1) for t in (x, y))
            return self.lpips(x.float().clamp(-1, 1), y.float().clamp(-1, 1)).view(b, -1).mean(1)
        return self.lpips(x.float().clamp(-1, 1), y.float().clamp(-1, 1))
