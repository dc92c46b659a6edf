"""Perceptual losses: LPIPS (Zhang et al. 2018, https://arxiv.org/abs/1801.03924) through the ``lpips`` package,
and the plain VGG16 feature loss of seed 004 (relu1_2, relu2_2, relu3_3, relu4_3, equal weights).

Nothing is ever downloaded. The small LPIPS linear layers ship inside the ``lpips`` package; the ImageNet
backbone (torchvision's VGG16 or AlexNet state dict) is read from a local file that the user names
(``loss.backbone_weights``) or finds in torch's hub cache. When it is missing we stop at once with a message that
says which file to provide and how. A randomly initialised backbone is used only when asked for explicitly
(``loss.random_backbone=true``, for tests and smoke runs).
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


def backbone_help(net: str, path: str | None = None) -> str:
    name = BACKBONE_FILES[net]
    where = f"{path!r} does not exist. " if path else "no backbone weights were given. "
    return (
        f"The perceptual loss needs torchvision's ImageNet {_TV_NAMES[net]} weights and {where}"
        f"On a machine with internet access run\n"
        f"  python -c \"import torch, torchvision; torch.save(torchvision.models.{_TV_NAMES[net]}(weights='DEFAULT')"
        f".state_dict(), '{name}')\"\n"
        f"copy the file here and pass --loss.backbone_weights /path/to/{name} (or put it in "
        f"{default_hub_dir()}). For a smoke run without it, pass --loss.random_backbone true "
        "(the loss is then not perceptual), or --loss.perceptual none."
    )


def default_hub_dir() -> Path:
    """Where torch's hub keeps downloaded weights (``$TORCH_HOME/hub/checkpoints``, as torch resolves it)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_weights_file(path: str | None, file_name: str, explain: Callable[[str | None], str]) -> Path:
    """A pretrained weights file: ``path`` if given, else ``file_name`` in torch's hub cache; never downloaded.

    Raises:
        BackboneWeightsMissing: with ``explain(path)``, the message saying how to get the file.
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise BackboneWeightsMissing(explain(str(p)))
        return p
    cached = default_hub_dir() / file_name
    if cached.is_file():
        return cached
    raise BackboneWeightsMissing(explain(None))


def resolve_backbone_file(net: str, path: str | None) -> Path:
    """The backbone file to use: ``path`` if given, else torchvision's cached file; raises if neither exists."""
    return resolve_weights_file(path, BACKBONE_FILES[net], lambda p: backbone_help(net, p))


def load_backbone_features(net: str, path: str | None) -> nn.Sequential:
    """torchvision ``features`` of VGG16 / AlexNet with ImageNet weights read from a local file (never fetched)."""
    file = resolve_backbone_file(net, path)  # first: a missing file is reported before any slow import
    import torchvision

    model = getattr(torchvision.models, _TV_NAMES[net])(weights=None)
    state = torch.load(file, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    missing, _ = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k.startswith("features.")]
    if missing:
        raise ValueError(f"{file} is not a torchvision {_TV_NAMES[net]} state dict: missing {missing[:5]}")
    return model.features


class LPIPS(nn.Module):
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
        self.net_name = net
        self.random_backbone = random_backbone

    def train(self, mode: bool = True) -> LPIPS:
        # Always in eval mode (dropout in the linear layers off), whatever the parent module does.
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:  # grayscale: the backbone reads RGB
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        return self.lpips(x, y, normalize=False).flatten()


class VGGFeatureLoss(nn.Module):
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

    def train(self, mode: bool = True) -> VGGFeatureLoss:
        return super().train(False)

    def _feats(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h = ((x + 1) / 2 - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.LAYERS:
                out.append(h)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        losses = [(a - b).pow(2).flatten(1).mean(1) for a, b in zip(self._feats(x), self._feats(y), strict=True)]
        return torch.stack(losses).mean(0)


def build_perceptual(kind: str, net: str = "vgg", backbone_weights: str | None = None, random_backbone: bool = False) -> nn.Module | None:
    """The perceptual loss module named by ``kind`` (``none``, ``lpips`` or ``vgg``)."""
    if kind == "none":
        return None
    if kind == "lpips":
        return LPIPS(net, backbone_weights, random_backbone)
    if kind == "vgg":
        return VGGFeatureLoss(backbone_weights, random_backbone)
    raise ValueError(f"unknown perceptual loss {kind!r}; choose none, lpips or vgg")
