"""Perceptual losses: LPIPS (Zhang et al. 2018, https://arxiv.org/abs/1801.03924) through the ``lpips`` package,
and seed 004's plain VGG16 feature loss.

Nothing is downloaded: the LPIPS linear layers ship inside ``lpips``, and the ImageNet backbone is read from
a local file (``loss.backbone_weights``) or torch's hub cache; when it is missing we stop at once saying which
file to provide. A random backbone is used only when asked for (``loss.random_backbone=true``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

# torchvision's file names for the ImageNet weights, as saved in torch's hub cache.
BACKBONE_FILES = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth"}
_TV_NAMES = {"vgg": "vgg16", "alex": "alexnet"}


class BackboneWeightsMissing(FileNotFoundError):
    """The pretrained backbone needed by a perceptual loss or metric is not on disk."""


def backbone_help(net: str, path: str | None = None, user: str = "The perceptual loss",
                  option: str = "--loss.backbone_weights /path/to/{file}",
                  fallback: str = "For a smoke run without it, pass --loss.random_backbone true (the loss is then "
                  "not perceptual), or --loss.perceptual none.") -> str:
    """How to get torchvision's ``net`` weights file, for the error of ``user`` that needs it at ``option``."""
    name, tv = BACKBONE_FILES[net], _TV_NAMES[net]
    where = f"{path!r} does not exist. " if path else "no backbone weights file was given. "
    save = f"torch.save(torchvision.models.{tv}(weights='DEFAULT').state_dict(), '{name}')"
    return (
        f"{user} needs torchvision's ImageNet {tv} weights ({name}) and {where}"
        f"On a machine with internet access run\n  python -c \"import torch, torchvision; {save}\"\n"
        f"copy the file here and pass {option.format(file=name)} (or put it in {default_hub_dir()}). {fallback}"
    )


def default_hub_dir() -> Path:
    """Where torch's hub keeps downloaded weights (``$TORCH_HOME/hub/checkpoints``, as torch resolves it)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_weights_file(path: str | None, file_name: str, explain: Callable[[str | None], str]) -> Path:
    """A pretrained weights file: ``path`` if given, else ``file_name`` in torch's hub cache (never fetched).
    Raises :class:`BackboneWeightsMissing` with ``explain(path)``, the message saying how to get the file."""
    p = Path(path).expanduser() if path is not None else default_hub_dir() / file_name
    if not p.is_file():
        raise BackboneWeightsMissing(explain(None if path is None else str(p)))
    return p


def load_backbone_features(net: str, path: str | None) -> nn.Sequential:
    """torchvision ``features`` of VGG16 / AlexNet with ImageNet weights read from a local file (never fetched)."""
    # First: a missing file is reported before any slow import.
    file = resolve_weights_file(path, BACKBONE_FILES[net], lambda p: backbone_help(net, p))
    import torchvision

    model = getattr(torchvision.models, _TV_NAMES[net])(weights=None)
    state = torch.load(file, map_location="cpu", weights_only=True)
    missing, _ = model.load_state_dict(state.get("state_dict", state), strict=False)
    missing = [k for k in missing if k.startswith("features.")]
    if missing:
        raise ValueError(f"{file} is not a torchvision {_TV_NAMES[net]} state dict: missing {missing[:5]}")
    return model.features


class _FrozenNet(nn.Module):
    """Always in eval mode (no dropout), whatever the parent module does; grayscale inputs read as RGB."""

    def train(self, mode: bool = True) -> _FrozenNet:
        return super().train(False)

    @staticmethod
    def rgb(x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class LPIPS(_FrozenNet):
    """LPIPS distance per sample, ``(B,)``, for images in [-1, 1], using the ``lpips`` package's network and its
    shipped linear weights; the backbone comes from :func:`load_backbone_features` (or random init)."""

    def __init__(self, net: str = "vgg", backbone_weights: str | None = None, random_backbone: bool = False):
        super().__init__()
        features = None if random_backbone else load_backbone_features(net, backbone_weights)
        import lpips

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # pnet_rand=True: the package must not try to download the backbone; we load it ourselves below.
            self.lpips = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
        if features is not None:
            for sl in self.lpips.net.children():
                for name, module in sl.named_children():
                    module.load_state_dict(features[int(name)].state_dict())
        self.lpips.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.lpips(self.rgb(x), self.rgb(y), normalize=False).flatten()


class VGGFeatureLoss(_FrozenNet):
    """Seed 004's perceptual loss: mean squared distance of frozen VGG16 features at relu1_2, relu2_2, relu3_3
    and relu4_3, equal weights. Returns ``(B,)``."""

    LAYERS = (3, 8, 15, 22)

    def __init__(self, backbone_weights: str | None = None, random_backbone: bool = False):
        super().__init__()
        if random_backbone:
            # Only the convolutional part (vgg16 is VGG(make_layers(cfgs["D"]))): building the 120M-parameter
            # classifier too would cost seconds for layers that are thrown away.
            from torchvision.models import vgg

            features = vgg.make_layers(vgg.cfgs["D"])
        else:
            features = load_backbone_features("vgg", backbone_weights)
        self.features = features[: self.LAYERS[-1] + 1].eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def _feats(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = ((self.rgb(x) + 1) / 2 - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.LAYERS:
                out.append(h)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        losses = [(a - b).pow(2).flatten(1).mean(1) for a, b in zip(self._feats(x), self._feats(y), strict=True)]
        return torch.stack(losses).mean(0)


def build_perceptual(
    kind: str, net: str = "vgg", backbone_weights: str | None = None, random_backbone: bool = False
) -> nn.Module | None:
    """The perceptual loss module named by ``kind`` (``none``, ``lpips`` or ``vgg``)."""
    if kind not in ("none", "lpips", "vgg"):
        raise ValueError(f"unknown perceptual loss {kind!r}; choose none, lpips or vgg")
    if kind == "lpips":
        return LPIPS(net, backbone_weights, random_backbone)
    return VGGFeatureLoss(backbone_weights, random_backbone) if kind == "vgg" else None
