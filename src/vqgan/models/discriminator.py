"""PatchGAN discriminator (Isola et al. 2017) as taming-transformers' ``NLayerDiscriminator``: it classifies
overlapping patches (70x70 for three layers), with optional spectral normalisation (Miyato et al. 2018) and a
3D variant for video."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from vqgan.config import DiscriminatorConfig


def _norm(kind: str, ch: int, dims: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(ch) if dims == 2 else nn.BatchNorm3d(ch)
    return nn.GroupNorm(min(32, ch), ch) if kind == "group" else nn.Identity()


class PatchDiscriminator(nn.Module):
    """``n_layers`` stride-2 4x4 convs with LeakyReLU(0.2), a stride-1 conv, and a 1-channel logit map."""

    def __init__(self, cfg: DiscriminatorConfig, in_channels: int = 3):
        super().__init__()
        self.dims = cfg.dims
        # 3D: a 3-frame temporal kernel (padding 1) instead of 4, so that short clips (e.g. 9 frames) keep at
        # least one output frame through every layer; time is halved by the strided layers like space.
        conv = nn.Conv2d if cfg.dims == 2 else _conv3d
        wrap = spectral_norm if cfg.spectral_norm else (lambda m: m)
        ch, use_bias = cfg.ch, cfg.norm == "none"
        layers: list[nn.Module] = [wrap(conv(in_channels, ch, 4, 2, 1)), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, cfg.n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < cfg.n_layers else 1
            layers += [
                wrap(conv(ch * prev, ch * mult, 4, stride, 1, bias=use_bias)),
                _norm(cfg.norm, ch * mult, cfg.dims),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(wrap(conv(ch * mult, 1, 4, 1, 1)))
        self.main = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch logits, ``(B, 1, h, w)`` (``(B, 1, t, h, w)`` in 3D). A 2D discriminator given clips
        ``(B, C, T, H, W)`` judges every frame on its own and returns ``(B * T, 1, h, w)``."""
        if self.dims == 2 and x.dim() == 5:
            x = x.transpose(1, 2).flatten(0, 1)
        return self.main(x)


def _conv3d(c_in: int, c_out: int, k: int, stride: int, pad: int, bias: bool = True) -> nn.Module:
    return nn.Conv3d(c_in, c_out, (3, k, k), stride, (1, pad, pad), bias=bias)


def _init_weights(m: nn.Module) -> None:
    # DCGAN initialisation, as in taming's ``weights_init``.
    if isinstance(m, (nn.Conv2d, nn.Conv3d)):
        weight = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
        nn.init.normal_(weight, 0.0, 0.02)
    elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
